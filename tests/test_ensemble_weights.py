"""training.ensemble --weight: a mean-logit ensemble whose members' logits count unequally."""
import numpy as np

from service.onnx_model import OnnxClassifier
from training import ensemble

from tests.test_soup import _answers, _export


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def test_a_weighted_ensemble_answers_the_sigmoid_of_its_members_weighted_mean_logit(tmp_path):
    one, two = _export(tmp_path, "one", 0), _export(tmp_path, "two", 1)
    args = ["--member", str(one), "--member", str(two), "--combine", "mean-logit", "--out", str(tmp_path)]
    assert ensemble.main([*args, "--weight", "3", "--weight", "1", "--name", "weighted"]) == 0
    assert ensemble.main([*args, "--name", "equal"]) == 0
    x = np.random.default_rng(0).normal(size=(6, 3, 64, 64)).astype(np.float32)
    first, second = _logit(_answers(one, x)), _logit(_answers(two, x))
    assert not np.allclose(first, second, atol=1e-2)  # the members do differ
    np.testing.assert_allclose(_answers(tmp_path / "weighted.onnx", x), 1 / (1 + np.exp(-(0.75 * first + 0.25 * second))), atol=1e-4)
    np.testing.assert_allclose(_answers(tmp_path / "equal.onnx", x), 1 / (1 + np.exp(-(first + second) / 2)), atol=1e-4)
    card = OnnxClassifier(tmp_path / "weighted.onnx", device="cpu").card
    assert [m["weight"] for m in card.training["members"]] == [0.75, 0.25]
    assert "(weight 0.75)" in card.architecture and "weight" not in OnnxClassifier(tmp_path / "equal.onnx", device="cpu").card.architecture


def test_an_ensemble_refuses_weights_it_cannot_use(tmp_path, capsys):
    one, two = _export(tmp_path, "one", 0), _export(tmp_path, "two", 1)
    members = ["--member", str(one), "--member", str(two), "--out", str(tmp_path), "--name", "bad"]
    assert ensemble.main([*members, "--weight", "3", "--weight", "1"]) == 2
    assert "needs --combine mean-logit" in capsys.readouterr().err
    assert ensemble.main([*members, "--combine", "mean-logit", "--weight", "1"]) == 2
    assert "one per member" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()


def test_an_ensemble_member_is_named_as_its_own_ensemble(tmp_path):
    one, two = _export(tmp_path, "one", 0), _export(tmp_path, "two", 1)
    pair = ["--member", str(one), "--member", str(two), "--combine", "mean-logit", "--out", str(tmp_path)]
    assert ensemble.main([*pair, "--name", "pair"]) == 0
    assert ensemble.main(["--member", str(tmp_path / "pair.onnx"), "--member", str(two), "--combine", "mean-logit", "--out", str(tmp_path),
                          "--weight", "2", "--weight", "1", "--name", "nested"]) == 0
    inner = OnnxClassifier(tmp_path / "pair.onnx", device="cpu").card.architecture
    outer = OnnxClassifier(tmp_path / "nested.onnx", device="cpu").card.architecture
    assert outer.startswith(f"ensemble: the mean logit of ({inner}) (weight 0.667) and ")
