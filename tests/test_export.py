"""ONNX export: parity with PyTorch, the model card round trip, and refusal of bad models."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from service.contract import ModelCard, ModelLoadError
from service.onnx_model import OnnxClassifier
from service.preprocess import PreprocessSpec
from training import export
from training.card import ExportError
from training.models import create_model


def tiny_card(name: str = "tiny", size: int = 64) -> ModelCard:
    spec = PreprocessSpec(input_size=size, margin=0.25, resize_filter="bilinear")
    return ModelCard(name=name, architecture="cnn", version="test-1", created="2026-01-01T00:00:00+00:00", preprocess=spec,
                     threshold=0.42, training={"datasets": ["unit-test"]}, metrics={"unit": {"roc_auc": 0.5}})


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    torch.manual_seed(0)
    model, _ = create_model("cnn", pretrained="none")
    out = tmp_path_factory.mktemp("exports")
    return model.eval(), export.export_model(model, tiny_card(), out)


def test_export_matches_pytorch_at_several_batch_sizes(tiny_export):
    model, path = tiny_export
    classifier = OnnxClassifier(path, device="cpu")
    wrapped = export.ProbabilityModel(model).eval()
    for batch in (1, 2, 7, 33):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = wrapped(x).numpy()
        got = classifier.predict(x.numpy())
        assert got.shape == (batch,)
        assert np.abs(got - expected).max() <= export.PARITY_TOLERANCE
        assert ((got >= 0) & (got <= 1)).all()


def test_batch_axis_is_dynamic_and_output_is_one_probability(tiny_export):
    _, path = tiny_export
    graph = onnx.load(str(path)).graph
    input_dims = graph.input[0].type.tensor_type.shape.dim
    assert input_dims[0].dim_param and not input_dims[0].dim_value
    assert [d.dim_value for d in input_dims[1:]] == [3, 64, 64]
    assert graph.output[0].name == "fake_probability"


def test_card_round_trips_through_metadata_and_json(tiny_export):
    _, path = tiny_export
    card = OnnxClassifier(path, device="cpu").card
    assert card == tiny_card().model_copy(update={"sha256": ""})
    beside = json.loads(path.with_suffix(".json").read_text())
    assert ModelCard.model_validate(beside).model_copy(update={"sha256": ""}) == card
    import hashlib

    assert beside["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_model_file_is_refused_with_a_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        OnnxClassifier(bad, device="cpu")


def test_missing_model_file_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxClassifier(tmp_path / "absent.onnx", device="cpu")


def test_model_without_card_is_refused(tiny_export, tmp_path):
    _, path = tiny_export
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelLoadError, match="export it with"):
        OnnxClassifier(bare, device="cpu")


def test_card_that_contradicts_the_graph_is_refused(tiny_export, tmp_path):
    _, path = tiny_export
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "facecheck.card":
            card = json.loads(prop.value)
            card["preprocess"]["input_size"] = 128
            prop.value = json.dumps(card)
    lying = tmp_path / "lying.onnx"
    onnx.save(proto, str(lying))
    with pytest.raises(ModelLoadError, match="does not match"):
        OnnxClassifier(lying, device="cpu")


def test_export_that_fails_parity_writes_nothing(tmp_path, monkeypatch):
    model, _ = create_model("cnn", pretrained="none")
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="differ"):
        export.export_model(model, tiny_card("refused"), tmp_path)
    assert not list(tmp_path.iterdir())


def test_export_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert export.main(["--checkpoint", str(tmp_path / "none.pt"), "--name", "x", "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_export_cli_writes_a_loadable_model_from_a_checkpoint(tmp_path):
    model, _ = create_model("cnn", pretrained="none")
    spec = PreprocessSpec(input_size=64)
    torch.save({"model": model.state_dict(), "model_name": "cnn", "preprocess": spec.model_dump(), "threshold": 0.3,
                "threshold_rule": "test", "history": [], "datasets": []}, tmp_path / "best.pt")
    assert export.main(["--checkpoint", str(tmp_path / "best.pt"), "--name", "fromckpt", "--out", str(tmp_path / "out")]) == 0
    card = OnnxClassifier(tmp_path / "out" / "fromckpt.onnx", device="cpu").card
    assert (card.architecture, card.threshold, card.preprocess.input_size) == ("cnn", 0.3, 64)
    assert card.command == f"python -m training.export --checkpoint {tmp_path}/best.pt --name fromckpt --out {tmp_path}/out"


def test_a_model_of_88_mb_exports_as_one_file_the_service_loads(tmp_path):
    """torch's exporter writes a larger model's weights to a second file (.onnx.data) that would not travel with
    the .onnx; the card step loads them and saves one self-contained file beside its card."""
    torch.manual_seed(0)
    model, _ = create_model("dinov2_small", pretrained="none")
    path = export.export_model(model.eval(), tiny_card("vit", size=42), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.json", "vit.onnx"]
    assert path.stat().st_size > 80_000_000
    x = torch.randn(3, 3, 42, 42)
    with torch.no_grad():
        expected = export.ProbabilityModel(model).eval()(x).numpy()
    assert np.abs(OnnxClassifier(path, device="cpu").predict(x.numpy()) - expected).max() <= export.PARITY_TOLERANCE
