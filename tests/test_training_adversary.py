"""--source-adversary: a head that names each real crop's source through a reversed gradient, trained beside the
classifier and never exported."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from test_training_e2e import TINY, make_dataset
from training import export, train
from training.adversary import NOT_REAL, SourceAdversary, real_sources, reversed_gradient, source_loss, source_targets
from training.cache import CropCache
from training.data import Sample


def sample(dataset: str, label: int) -> Sample:
    return Sample(Path(f"/data/{dataset}/{'fake' if label else 'real'}/x.jpg"), label, dataset)


def test_the_reversed_gradient_passes_values_and_turns_the_gradient() -> None:
    features = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    out = reversed_gradient(features)
    assert torch.equal(out, features)
    (out * torch.tensor([2.0, 3.0, 4.0])).sum().backward()
    assert features.grad.tolist() == [-2.0, -3.0, -4.0]
    scaled = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (reversed_gradient(scaled, 0.25) * torch.tensor([2.0, 3.0, 4.0])).sum().backward()
    assert scaled.grad.tolist() == [-0.5, -0.75, -1.0]  # DANN's lambda scales what the features get, not the head's loss


def test_a_descent_step_teaches_the_head_the_source_and_the_features_to_hide_it() -> None:
    torch.manual_seed(0)
    head, targets = SourceAdversary(4, 2, strength=1.0), torch.tensor([0, 1, 0, 1, NOT_REAL, NOT_REAL])
    features = torch.randn(6, 4, requires_grad=True)
    before, _, _ = source_loss(head(features), targets)
    before.backward()
    with torch.no_grad():
        moved_features = features - 0.05 * features.grad  # the step the backbone takes, through the reversal
        for parameter in head.parameters():
            parameter -= 0.05 * parameter.grad
        head_stepped, _, _ = source_loss(head(features), targets)
        for parameter in head.parameters():
            parameter += 0.05 * parameter.grad
        features_stepped, _, _ = source_loss(head(moved_features), targets)
    assert head_stepped < before < features_stepped


def test_only_real_crops_have_a_source_to_hide() -> None:
    samples = [sample("utk", 0), sample("rff", 1), sample("lfw", 0), sample("rff", 0), sample("sd", 1)]
    sources = real_sources(samples)
    assert sources == ["lfw", "rff", "utk"]  # sd has no real photos; rff's fakes are not its source
    assert source_targets(samples, sources).tolist() == [2, NOT_REAL, 0, 1, NOT_REAL]


def test_the_loss_reads_the_real_crops_alone_and_counts_what_the_head_named() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0]])
    loss, right, count = source_loss(logits, torch.tensor([0, 0, NOT_REAL, NOT_REAL]))
    assert (right, count) == (1, 2)
    expected = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(expected.item())
    none, right, count = source_loss(logits, torch.full((4,), NOT_REAL))
    assert none.item() == 0 and (right, count) == (0, 0)


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setattr(train, "CropCache", partial(CropCache, root))
    return root


def two_real_sources(root: Path) -> list[str]:
    first = make_dataset(root / "first", n_real=8, n_fake=8)
    second = make_dataset(root / "second", n_real=8, n_fake=0)
    return ["--data", str(first), "--data", str(second)]


@pytest.mark.slow
def test_the_adversary_trains_beside_the_classifier_and_is_never_exported(tmp_path: Path, private_cache) -> None:
    run = tmp_path / "run"
    args = ["--model", "resnet18", *two_real_sources(tmp_path), "--out", str(run), "--pretrained", "none", *TINY, "--source-adversary", "0.5"]
    assert train.main(args) == 0
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert "--source-adversary 0.5" in state["command"] and np.isfinite(state["history"][0]["train_loss"])
    assert tuple(state["source_head"]["classify.2.weight"].shape)[0] == 2  # the two real sources
    assert 0 <= state["history"][0]["source_named"] <= 1
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]][1] == pytest.approx(10 * [g["initial_lr"] for g in state["optimizer"]["param_groups"]][0])
    assert not any(key.startswith("source") or key.startswith("classify") for key in state["model"])
    assert train.main([*args, "--resume"]) == 0  # the head is loaded back (strictly) with the rest
    assert export.main(["--checkpoint", str(run / "last.pt"), "--name", "adv", "--out", str(tmp_path / "x")]) == 0
    assert len(onnx.load(tmp_path / "x" / "adv.onnx").graph.output) == 1  # the real-vs-fake logit alone


@pytest.mark.parametrize("data, weight, message", [
    ("one", "1", "needs real photos from two sources or more"),
    ("two", "-1", "--source-adversary is a weight"),
])
def test_the_adversary_refuses_what_it_cannot_do(tmp_path: Path, private_cache, capsys, data: str, weight: str, message: str) -> None:
    folders = ["--data", str(make_dataset(tmp_path / "only", n_real=4, n_fake=4))] if data == "one" else two_real_sources(tmp_path)
    code = train.main(["--model", "resnet18", *folders, "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY, "--source-adversary", weight])
    assert code == 2
    assert message in capsys.readouterr().err
