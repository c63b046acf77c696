"""training.soup: one network whose weights are the members' weighted mean, at one member's cost."""
import numpy as np
import pytest
import torch

from service.onnx_model import OnnxClassifier
from training import export, soup
from training.data import Split
from training.from_onnx import fused_weights
from training.models import create_model

from tests.test_export import tiny_card


def _export(out, name: str, seed: int, size: int = 64):
    torch.manual_seed(seed)
    model, _ = create_model("cnn", pretrained="none")
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # folding must matter
        norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0)
    path = export.export_model(model.eval(), tiny_card(name, size), out)
    Split(seed=0, fractions=(0.7, 0.15, 0.15), datasets={"set": {"train": ["a"], "val": ["b"], "test": ["c"]}}).save(path.with_suffix(".split.json"))
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    out = tmp_path_factory.mktemp("members")
    return out, _export(out, "one", 0), _export(out, "two", 1)


def _answers(path, x: np.ndarray) -> np.ndarray:
    return OnnxClassifier(path, device="cpu").session.run(None, {"input": x})[0]


def test_a_soup_weighted_wholly_to_one_member_answers_as_that_member(members):
    out, one, two = members
    assert soup.main(["--member", str(one), "--member", str(two), "--weight", "1", "--weight", "0", "--name", "all-one", "--out", str(out)]) == 0
    x = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(_answers(out / "all-one.onnx", x), _answers(one, x), atol=1e-6)
    assert not np.allclose(_answers(two, x), _answers(one, x), atol=1e-3)  # the members do differ


def test_a_soup_holds_the_weighted_mean_of_the_folded_weights_and_records_its_members(members):
    out, one, two = members
    assert soup.main(["--member", str(one), "--member", str(two), "--weight", "3", "--weight", "1", "--name", "mixed", "--out", str(out)]) == 0
    mixed, first, second = (fused_weights(p) for p in (out / "mixed.onnx", one, two))
    assert mixed.keys() == first.keys()
    for name, (weight, _) in mixed.items():
        np.testing.assert_allclose(weight, 0.75 * first[name][0] + 0.25 * second[name][0], rtol=1e-5, atol=1e-6)
    card = OnnxClassifier(out / "mixed.onnx", device="cpu").card
    assert [(m["name"], m["weight"]) for m in card.training["soup"]] == [("one", 0.75), ("two", 0.25)]
    assert card.preprocess == tiny_card().preprocess and (out / "mixed.split.json").exists()


def test_a_soup_refuses_members_of_another_input_size(members, tmp_path, capsys):
    out, one, _ = members
    other = _export(tmp_path, "bigger", 2, size=96)
    assert soup.main(["--member", str(one), "--member", str(other), "--name", "bad", "--out", str(tmp_path)]) == 2
    assert "not the same network" in capsys.readouterr().err and not (tmp_path / "bad.onnx").exists()


def test_a_soup_refuses_a_weight_count_that_does_not_match_its_members(members, tmp_path, capsys):
    out, one, two = members
    assert soup.main(["--member", str(one), "--member", str(two), "--weight", "1", "--name", "bad", "--out", str(tmp_path)]) == 2
    assert "one per member" in capsys.readouterr().err
