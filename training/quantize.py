"""Quantize an exported model to int8 and record what that costs in accuracy.

    python -m training.quantize --model exports/default.onnx \
        --data ../shared/data/tpdne128 --data ../shared/data/rff --data ../shared/data/utk-real

Writes exports/<name>-int8.onnx and its card (and a copy of the split) beside the model. ONNX Runtime's
static quantization: int8 weights per output channel, uint8 activations, QDQ format, with the activation
ranges calibrated on crops of the model's training split. The int8 model gets its own threshold (chosen on
validation, as the export does), and its card records its test metrics and their change against the
float model, both measured in this run through the service's pipeline. The service loads it as it loads
any export: FACECHECK_MODEL=exports/<name>-int8.onnx.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import logging
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from service.config import get_settings, parse_angles
from service.contract import ModelCard, ModelLoadError
from service.onnx_model import read_card
from service.preprocess import to_input
from training.cache import CropCache
from training.card import ExportError, attach_card, evaluate_through_service, service_threshold_rule, write_card_json
from training.chains import ROBUSTNESS_CHAINS
from training.cli import start_command
from training.data import DatasetError, Split, scan_dataset
from training.scoring import default_split_file

COMPARED = ("roc_auc", "accuracy", "f1", "false_positive_rate")
# The int8 copy may serve by default on CPU only where, on every test split and re-processing chain, it
# ranks as well as the float model and calls as many real photos fake: the largest change allowed.
CPU_DEFAULT_RULE = {"roc_auc": 0.005, "false_positive_rate": 0.005}
# The first convolutions see the photo's finest detail, where int8 rounding costs the fine-tuned 224 px network
# most of its ranking (tpdne128 validation ROC-AUC 0.899 all int8, 0.952 with these four and the head kept
# float, 0.954 float); the rest of the network is quantized.
FLOAT_CONVS = 4
ENSEMBLE_MEMBER = re.compile(r"m\d+_")


def float_nodes(model_path: Path, float_convs: int) -> list[str]:
    """The nodes kept in float: the first `float_convs` convolutions in graph order, of each member where the
    graph is a training.ensemble (its nodes named m0_..., m1_...), and the fully connected heads."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    convs: dict[str, list[str]] = {}
    for node in (n for n in nodes if n.op_type == "Conv"):
        member = ENSEMBLE_MEMBER.match(node.name)
        convs.setdefault(member[0] if member else "", []).append(node.name)
    return [name for member in convs.values() for name in member[:float_convs]] + [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]


def quantize_int8(source: Path, target: Path, calibration: np.ndarray, float_convs: int = FLOAT_CONVS) -> None:
    """Static int8 quantization of `source` (NCHW float32 input) into `target`, calibrated on `calibration`,
    all but float_nodes()."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnxruntime as ort

    input_name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 16] for i in range(0, len(calibration), 16))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every weight scale it adjusts to the root logger at INFO
    try:
        source, target = Path(source).resolve(), Path(target).resolve()
        # ONNX Runtime's shape inference leaves files in the working directory when it gives up
        with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
            prepared = Path(tmp) / "prepared.onnx"
            try:
                quant_pre_process(str(source), str(prepared))
            except Exception:  # noqa: BLE001 - its symbolic shape inference gives up on some graphs (an ensemble's Resize branch)
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=float_nodes(prepared, float_convs))
    finally:
        root.setLevel(level)


def calibration_inputs(card: ModelCard, split: Split, folders: Sequence[Path], count: int, seed: int = 0) -> np.ndarray:
    """`count` training-split crops, drawn at random, as the model's normalised input."""
    samples = split.select([s for folder in folders for s in scan_dataset(folder)], "train")
    random.Random(seed).shuffle(samples)
    crops = CropCache().crop_set(samples[:count], card.preprocess, desc="calibration crops").crops
    return to_input(crops, card.preprocess)


def metric_changes(float_metrics: dict[str, Any], int8_metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per test set, int8 minus float for each compared metric (None where a metric is undefined)."""
    changes = {}
    for name, before in float_metrics["test"].items():
        after = int8_metrics["test"][name]
        changes[name] = {key: None if before[key] is None or after[key] is None else round(after[key] - before[key], 4) for key in COMPARED}
    return changes


def paired(float_metrics: dict[str, Any], int8_metrics: dict[str, Any], key: str) -> Iterator[tuple[str, float | None, float | None]]:
    """(where, float figure, int8 figure) of `key` for each test split and each chain's split."""
    for name, before in float_metrics["test"].items():
        yield f"test {name}", before.get(key), int8_metrics["test"][name].get(key)
    int8_chains = int8_metrics.get("robustness", {}).get("chains", {})
    for chain, sets in float_metrics.get("robustness", {}).get("chains", {}).items():
        for name, before in sets.items():
            yield f"{chain} {name}", before.get(key), int8_chains.get(chain, {}).get(name, {}).get(key)


def cpu_default_check(float_metrics: dict[str, Any], int8_metrics: dict[str, Any]) -> dict[str, Any]:
    """CPU_DEFAULT_RULE applied: the largest |int8 - float| of each ruled figure, where it is, and whether the rule holds."""
    figures = {}
    for key, limit in CPU_DEFAULT_RULE.items():
        changes = [(abs(after - before), where) for where, before, after in paired(float_metrics, int8_metrics, key)
                   if before is not None and after is not None]
        largest, where = max(changes, default=(0.0, "-"))
        figures[key] = {"largest_change": round(largest, 4), "where": where, "limit": limit, "holds": largest <= limit}
    return {"rule": "the int8 copy serves by default on CPU if, on every test split and re-processing chain, its ROC-AUC is within "
                    f"{CPU_DEFAULT_RULE['roc_auc']} of the float model's and its share of real photos called fake within "
                    f"{CPU_DEFAULT_RULE['false_positive_rate'] * 100:g} points", "figures": figures, "holds": all(f["holds"] for f in figures.values())}


def remeasured_record(int8_model: Path, record: dict[str, Any], int8_metrics: dict[str, Any]) -> dict[str, Any]:
    """An int8 card's quantization `record` once the int8 model was calibrated and measured again: its changes
    and the CPU default rule against `int8_metrics`, from the float model's card beside it."""
    float_model = int8_model.with_name(f"{record['float_model']['name']}.onnx")
    if not float_model.is_file() or hashlib.sha256(float_model.read_bytes()).hexdigest() != record["float_model"]["sha256"]:
        raise ExportError(f"{int8_model.name} was quantized from a {float_model.name} that is no longer beside it; quantize it again")
    float_metrics = read_card(float_model).metrics
    return {**record, "float_test_metrics": float_metrics["test"], "test_change": metric_changes(float_metrics, int8_metrics),
            "cpu_default": cpu_default_check(float_metrics, int8_metrics),
            "probability_calibration": "fitted on the int8 model's own validation probabilities (python -m training.calibrate)"}


def float_card_metrics(model: Path, card: ModelCard, split_file: Path, angles: Sequence[float]) -> dict[str, Any] | None:
    """The float model's own card figures where they were measured as the int8 model's will be: on the
    split file the export wrote beside it, with the same rotations and chains. Measuring again gives the same."""
    same_split = split_file.resolve() == default_split_file(model).resolve()
    same_chains = list(card.metrics.get("robustness", {}).get("chains", {})) == list(ROBUSTNESS_CHAINS)
    if card.metrics.get("test") and card.training.get("tta_angles") == list(angles) and same_split and same_chains:
        return card.metrics
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="an export of python -m training.export (exports/<name>.onnx)")
    p.add_argument("--data", type=Path, action="append", default=[], help="the dataset folders of the model's split (repeat; required to quantize)")
    p.add_argument("--check", action="store_true", help="quantize nothing: apply the CPU default rule to the cards of --model and its -int8 copy")
    p.add_argument("--split-file", type=Path, help="the model's split (default: <name>.split.json beside the model)")
    p.add_argument("--calibration", type=int, default=256, help="training crops that calibrate the activation ranges")
    p.add_argument("--float-convs", type=int, default=FLOAT_CONVS, help=f"the first convolutions kept in float, with the head (default {FLOAT_CONVS})")
    p.add_argument("--tta", help="rotations for threshold and metrics (default: those in force for the float model: FACECHECK_TTA_ANGLES, else its card's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.quantize", argv)
    args = parse_args(argv)
    if args.check:
        return check_cards(args.model)
    if not args.data:
        print("error: --data is required to quantize (repeat it for each dataset of the model's split)", file=sys.stderr)
        return 2
    try:
        print(quantize_export(args.model, args.data, args.split_file, args.calibration, args.tta, command, args.float_convs))
        return 0
    except (ExportError, DatasetError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def check_cards(model: Path) -> int:
    """Prints CPU_DEFAULT_RULE applied to the measured figures of `model` and its int8 copy; 0 where it holds, 1 where not."""
    int8 = model.with_name(f"{model.stem}-int8.onnx")
    try:
        check = cpu_default_check(read_card(model).metrics, read_card(int8).metrics)
    except (ModelLoadError, KeyError) as exc:
        print(f"error: cannot compare {model} with {int8}: {exc}", file=sys.stderr)
        return 2
    print(cpu_default_lines(check))
    return 0 if check["holds"] else 1


def quantize_export(model: Path, folders: Sequence[Path], split_file: Path | None, calibration: int, tta: str | None, command: str,
                    float_convs: int = FLOAT_CONVS) -> Path:
    """Write <name>-int8.onnx, its card and split beside `model`; returns the new model's path."""
    card = read_card(model)
    split_file = split_file or default_split_file(model)
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file} (give --split-file)")
    split = Split.load(split_file)
    angles = get_settings().angles_for(card) if tta is None else parse_angles(tta)
    target = model.with_name(f"{model.stem}-int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / target.name
        quantize_int8(model, staged, calibration_inputs(card, split, folders, calibration), float_convs)
        float_metrics = float_card_metrics(model, card, split_file, angles) or evaluate_through_service(model, split, folders, angles)[1]
        threshold, metrics = evaluate_through_service(staged, split, folders, angles)
        int8_card = card.model_copy(update={
            "name": target.stem, "version": f"{card.version}-int8", "threshold": threshold, "metrics": metrics,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
            "threshold_rule": service_threshold_rule(angles),
            "quantization": {"method": "ONNX Runtime static quantization: QDQ, int8 weights per channel, uint8 activations, MinMax; "
                                       f"the first {float_convs} convolutions and the head kept float",
                             "calibration_crops": calibration, "float_model": {"name": card.name, "sha256": hashlib.sha256(model.read_bytes()).hexdigest()},
                             "float_test_metrics": float_metrics["test"], "test_change": metric_changes(float_metrics, metrics),
                             "cpu_default": cpu_default_check(float_metrics, metrics),
                             "probability_calibration": "the float model's calibration and uncertain band, kept as they are (the threshold "
                                                        "is the int8 model's own); python -m training.calibrate refits both on the int8 model"}})
        attach_card(staged, int8_card)
        shutil.move(staged, target)
    write_card_json(target, int8_card)
    shutil.copyfile(split_file, default_split_file(target))
    _print_changes(int8_card)
    return target


def _print_changes(card: ModelCard) -> None:
    print(f"threshold {card.threshold:.4f}; change against the float model (int8 - float), test split:")
    print(f"{'dataset':<12} " + " ".join(f"{key:>20}" for key in COMPARED))
    for name, change in card.quantization["test_change"].items():
        print(f"{name:<12} " + " ".join(f"{'-' if change[k] is None else f'{change[k]:+.4f}':>20}" for k in COMPARED))
    print(cpu_default_lines(card.quantization["cpu_default"]))


def cpu_default_lines(check: dict[str, Any]) -> str:
    lines = [f"{check['rule']}: {'holds' if check['holds'] else 'does not hold'}"]
    lines += [f"  {key}: largest change {f['largest_change']:.4f} ({f['where']}), limit {f['limit']}: {'holds' if f['holds'] else 'fails'}"
              for key, f in check["figures"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
