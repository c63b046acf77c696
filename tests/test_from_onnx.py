"""training.from_onnx: an export read back into a trainable network answers as the export does."""
import numpy as np
import pytest
import torch

from service.config import DEFAULT_MODEL
from service.onnx_model import OnnxClassifier, read_card
from training import export
from training.card import ExportError
from training.from_onnx import fused_weights, load_fused, member_export, restore_batch_statistics
from training.models import create_model

from tests.test_export import tiny_card


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory):
    torch.manual_seed(0)
    model, _ = create_model("cnn", pretrained="none")
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # folding must matter
        norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0), norm.weight.data.uniform_(0.5, 1.5)
    return export.export_model(model.eval(), tiny_card(), tmp_path_factory.mktemp("exports"))


def _onnx_probabilities(path, x: torch.Tensor) -> np.ndarray:
    return OnnxClassifier(path, device="cpu").session.run(None, {"input": x.numpy()})[0]


def _probabilities(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(x)).squeeze(1).numpy()


def test_read_back_network_answers_as_the_export_in_eval_mode(exported_cnn):
    torch.manual_seed(1)
    model, _ = create_model("cnn", pretrained="none")
    load_fused(model, fused_weights(exported_cnn))
    x = torch.randn(6, 3, 64, 64)
    np.testing.assert_allclose(_probabilities(model.eval(), x), _onnx_probabilities(exported_cnn, x), atol=1e-5)


def test_restored_batch_statistics_keep_eval_mode_and_make_training_mode_agree(exported_cnn):
    torch.manual_seed(2)  # random photos, but the same ones on every run
    model, _ = create_model("cnn", pretrained="none")
    load_fused(model, fused_weights(exported_cnn))
    batches = [torch.randn(32, 3, 64, 64) for _ in range(4)]
    restore_batch_statistics(model, batches)
    x = torch.randn(6, 3, 64, 64)
    np.testing.assert_allclose(_probabilities(model.eval(), x), _onnx_probabilities(exported_cnn, x), atol=1e-5)
    assert any(float(m.running_var.mean()) != 1.0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    eval_mode = _probabilities(model.eval(), batches[0])
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    np.testing.assert_allclose(_probabilities(model, batches[0]), eval_mode, atol=0.02)


def test_export_of_another_architecture_is_refused_by_name(exported_cnn):
    model, _ = create_model("efficientnet_lite0", pretrained="none")
    with pytest.raises(ExportError, match="no weights for"):
        load_fused(model, fused_weights(exported_cnn))


def test_an_ensembles_members_come_out_whole(tmp_path):
    """exports/default.onnx is a mean-logit ensemble: its members, extracted, answer what its own graph combines."""
    ensemble = DEFAULT_MODEL
    card = read_card(ensemble)
    if card.training.get("combine") != "mean-logit":
        pytest.skip(f"the default model is {card.architecture!r}, not a mean-logit ensemble")
    x = torch.randn(3, 3, card.preprocess.input_size, card.preprocess.input_size)
    members = [member_export(ensemble, index, tmp_path) for index in range(len(card.training["members"]))]
    logits = [np.log(p / (1 - p)) for p in (_onnx_probabilities(m, x).astype(np.float64) for m in members)]
    expected = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    np.testing.assert_allclose(_onnx_probabilities(ensemble, x), expected, atol=1e-4)
    assert read_card(members[0]).architecture == card.training["members"][0]["architecture"]
    assert (tmp_path / "default-member1.split.json").read_text() == ensemble.with_suffix(".split.json").read_text()
    with pytest.raises(ExportError, match=f"no member {len(members)}"):
        member_export(ensemble, len(members), tmp_path)
