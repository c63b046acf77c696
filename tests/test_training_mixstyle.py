"""--mixstyle: early feature statistics mixed between crops of one class from different sources, in training only."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from test_training_adversary import two_real_sources
from test_training_e2e import TINY, make_dataset
from training import export, train
from training.cache import CropCache
from training.mixstyle import MixStyle, mix_statistics, partners


def test_partners_share_the_label_and_come_from_another_source_where_there_is_one() -> None:
    labels = [0, 0, 0, 1, 1, 1, 0]
    datasets = ["utk", "lfw", "utk", "sd", "tp", "tp", "utk"]
    for seed in range(20):
        chosen = partners(labels, datasets, np.random.default_rng(seed))
        for i, j in enumerate(chosen):
            assert labels[j] == labels[i]
            assert datasets[j] != datasets[i]  # every crop here has a partner from another source
    alone = partners([0, 0, 1], ["utk", "utk", "sd"], np.random.default_rng(0))
    assert alone.tolist() == [1, 0, 2]  # one source: another crop of it; the only fake keeps its own statistics


def test_mixing_moves_each_crops_statistics_toward_its_partners_and_keeps_its_pattern() -> None:
    torch.manual_seed(0)
    features = torch.stack([torch.randn(3, 5, 5) * 1.0 + 0.0, torch.randn(3, 5, 5) * 4.0 + 10.0])
    swapped = mix_statistics(features, torch.tensor([1, 0]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(swapped[0].mean(dim=(1, 2)), features[1].mean(dim=(1, 2)), atol=1e-4)  # crop 0 takes all of crop 1's look
    assert torch.allclose(swapped[0].std(dim=(1, 2)), features[1].std(dim=(1, 2)), rtol=1e-3)
    assert torch.allclose(swapped[1], features[1], atol=1e-4)  # weight 1: its own
    pattern = lambda x: (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)  # noqa: E731
    assert torch.allclose(pattern(swapped[0]), pattern(features[0]), atol=1e-4)


def test_the_hooks_mix_in_training_and_pass_through_in_evaluation() -> None:
    stage = torch.nn.Conv2d(3, 4, 3)
    mixer = MixStyle([stage], probability=1.0, seed=0)
    inputs = torch.randn(4, 3, 8, 8)
    plain = torch.nn.functional.conv2d(inputs, stage.weight, stage.bias)
    mixer.draw([0, 0, 1, 1], ["a", "b", "a", "b"], views=1, device=torch.device("cpu"))
    assert not torch.allclose(stage.train()(inputs), plain)
    assert torch.allclose(stage.eval()(inputs), plain)
    mixer.draw([0, 0, 1, 1], ["a", "b", "a", "b"], views=2, device=torch.device("cpu"))
    assert mixer.partner.tolist()[4:] == [j + 4 for j in mixer.partner.tolist()[:4]]  # the second view mixes within itself
    never = MixStyle([stage.train()], probability=0.0, seed=0)
    never.draw([0, 0, 1, 1], ["a", "b", "a", "b"], views=1, device=torch.device("cpu"))
    assert never.partner is None


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setattr(train, "CropCache", partial(CropCache, root))
    return root


@pytest.mark.slow
def test_a_mixstyle_run_trains_resumes_and_exports_a_plain_network(tmp_path: Path, private_cache) -> None:
    run = tmp_path / "run"
    args = ["--model", "efficientnet_lite0", *two_real_sources(tmp_path), "--out", str(run), "--pretrained", "none", *TINY,
            "--input-size", "64", "--mixstyle", "1"]
    assert train.main(args) == 0
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert "--mixstyle 1" in state["command"] and np.isfinite(state["history"][0]["train_loss"])
    assert train.main([*args, "--resume"]) == 0
    assert export.main(["--checkpoint", str(run / "last.pt"), "--name", "mix", "--out", str(tmp_path / "x")]) == 0
    assert len(onnx.load(tmp_path / "x" / "mix.onnx").graph.output) == 1


@pytest.mark.parametrize("model, share, message", [
    ("resnet18", "0.5", "--mixstyle needs an EfficientNet-Lite model"),
    ("efficientnet_lite0", "1.5", "--mixstyle is a share of the batches"),
])
def test_mixstyle_refuses_what_it_cannot_do(tmp_path: Path, private_cache, capsys, model: str, share: str, message: str) -> None:
    folders = ["--data", str(make_dataset(tmp_path / "only", n_real=4, n_fake=4))]
    code = train.main(["--model", model, *folders, "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY, "--mixstyle", share])
    assert code == 2
    assert message in capsys.readouterr().err
