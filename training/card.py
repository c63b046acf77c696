"""What an export carries and how its numbers are measured, shared by training.export and training.quantize:
the model card inside the .onnx and beside it (<name>.json), the threshold rule it records, and the
threshold and test metrics measured through the service's pipeline."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import onnx

from service.contract import CARD_KEY, ModelCard, card_path
from training.data import Split, scan_dataset
from training.metrics import THRESHOLD_RULE, balanced_accuracy_threshold, binary_metrics
from training.scoring import predict_onnx

SHORTCUT_CHECK = (256, 85)  # every test image re-encoded to this side and JPEG quality


class ExportError(RuntimeError):
    """The export was refused: nothing was written."""


def attach_card(path: Path, card: ModelCard) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entries = {CARD_KEY: card.model_dump_json(), "name": card.name, "version": card.version,
               "architecture": card.architecture, "threshold": str(card.threshold),
               "input_size": str(card.preprocess.input_size), "class_names": ",".join(card.class_names)}
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.doc_string = f"facecheck {card.name} {card.version}: {card.output}"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def write_card_json(onnx_path: Path, card: ModelCard) -> None:
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    card_path(onnx_path).write_text(card.model_copy(update={"sha256": digest}).model_dump_json(indent=2) + "\n")


def service_threshold_rule(angles: Sequence[float]) -> str:
    return f"{THRESHOLD_RULE}; TTA {list(angles)}, through the service pipeline"


def evaluate_through_service(onnx_path: Path, split: Split, folders: Sequence[Path], angles: Sequence[float]) -> tuple[float, dict[str, Any]]:
    """Choose the threshold on validation, then measure each dataset's test split as the service would, and
    again with every test image re-encoded to one size and JPEG quality (a model that learned a dataset's
    resolution or compression instead of faces falls apart there)."""
    samples = [s for folder in folders for s in scan_dataset(folder)]
    val = predict_onnx(onnx_path, split.select(samples, "val"), angles, device="cpu", desc="validation")
    threshold = balanced_accuracy_threshold(val.labels, val.probs, val.datasets)
    metrics: dict[str, Any] = {"test": {}, "test_reencoded": {"size": SHORTCUT_CHECK[0], "jpeg_quality": SHORTCUT_CHECK[1], "datasets": {}}}
    for folder in folders:
        name = Path(folder).name
        test = split.select([s for s in samples if s.dataset == name], "test")
        for key, reencoded in (("test", None), ("test_reencoded", SHORTCUT_CHECK)):
            found = predict_onnx(onnx_path, test, angles, device="cpu", desc=f"{key} {name}", reencoded=reencoded)
            result = binary_metrics(found.labels, found.probs, threshold) | {"faces_found": int(found.face_found.sum())}
            (metrics[key] if key == "test" else metrics[key]["datasets"])[name] = result
    return threshold, metrics
