"""What an export carries and how its numbers are measured, shared by training.export and training.quantize:
the model card inside the .onnx and beside it (<name>.json), the threshold rule it records, and the
threshold and test metrics measured through the service's pipeline."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from service.calibration import UncertainBand
from service.contract import CARD_KEY, ModelCard, card_path
from training import robustness
from training.chains import ROBUSTNESS_CHAINS
from training.data import Sample, Split, scan_dataset
from training.metrics import CAUTIOUS_RULE, binary_metrics, cautious_threshold
from training.scoring import predict_onnx


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
    return f"{CAUTIOUS_RULE}; TTA {list(angles)}, through the service pipeline"


def evaluate_through_service(onnx_path: Path, split: Split, folders: Sequence[Path], angles: Sequence[float],
                             chains: Sequence[str] = ROBUSTNESS_CHAINS) -> tuple[float, dict[str, Any]]:
    """Choose the threshold on validation, then measure each dataset's test split as the service would, and
    again after each re-processing chain (a model that learned a dataset's resolution or compression
    instead of faces falls apart there)."""
    samples = [s for folder in folders for s in scan_dataset(folder)]
    threshold = validation_threshold(onnx_path, split, samples, angles)
    return threshold, measure_test(onnx_path, split, samples, angles, threshold, chains)


def validation_threshold(onnx_path: Path, split: Split, samples: Sequence[Sample], angles: Sequence[float]) -> float:
    val = predict_onnx(onnx_path, split.select(samples, "val"), angles, device="cpu", desc="validation")
    return cautious_threshold(val.labels, val.probs, val.datasets)


def measure_test(onnx_path: Path, split: Split, samples: Sequence[Sample], angles: Sequence[float], threshold: float,
                 chains: Sequence[str] = ROBUSTNESS_CHAINS, band: UncertainBand | None = None) -> dict[str, Any]:
    """The test split's metrics per set at `threshold`, unprocessed and after each chain; with the model's
    `band`, also the verdicts the service gives (robustness.VERDICTS), so that a card can show them later."""
    test = split.select(samples, "test")
    found = predict_onnx(onnx_path, test, angles, device="cpu", desc="test")
    sets = np.array(found.datasets)
    metrics: dict[str, Any] = {"test": {}, "robustness": {"split": "test", "angles": list(angles), "chains": {}}}
    for name in dict.fromkeys(found.datasets):
        inside = sets == name
        metrics["test"][name] = (binary_metrics(found.labels[inside], found.probs[inside], threshold)
                                 | robustness.verdicts(found.labels[inside], found.probs[inside], threshold, band)
                                 | {"faces_found": int(found.face_found[inside].sum())})
    if band is not None:
        metrics["robustness"]["band"] = list(band.edges)
    metrics["robustness"]["chains"] = robustness.measure(onnx_path, test, angles, chains, threshold, band=band)
    return metrics


def robustness_results(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A card's robustness figures as robustness.measure gives them, the unprocessed test split first."""
    shown = robustness.KEPT + (robustness.VERDICTS if "band" in metrics.get("robustness", {}) else ())
    unprocessed = {name: {key: m.get(key) for key in shown} for name, m in metrics["test"].items()}
    for name, m in unprocessed.items():
        m["recall"] = None if metrics["test"][name]["per_class"]["fake"]["support"] == 0 else m["recall"]
    return {robustness.UNPROCESSED: unprocessed, **metrics.get("robustness", {}).get("chains", {})}
