"""Export a training checkpoint to ONNX with its preprocessing contract inside.

    python -m training.export --checkpoint runs/default/best.pt --name default \
        --data ../shared/data/tpdne128 --data ../shared/data/rff --data ../shared/data/utk-real

Writes exports/<name>.onnx (dynamic batch axis, NCHW float32 in, probability of fake out), the model
card exports/<name>.json and, when data is given, exports/<name>.split.json. With data, the export is
then calibrated (training/calibrate.py): its probabilities calibrated and its uncertain band chosen on
the validation split, its threshold chosen on the calibrated validation probabilities, and the card
records test metrics per dataset, all measured through the service's own pipeline with its default
test-time rotations; the reliability diagrams go to calibration/ in the checkpoint's run folder.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from service.config import REPO_ROOT, get_settings, parse_angles
from service.contract import ModelCard
from service.onnx_model import OnnxClassifier
from service.preprocess import PreprocessSpec, to_input
from training.cache import CropCache
from training import robustness
from training.calibrate import CalibrationError, calibrate_model
from training.calibrate import table as calibration_table
from training.card import ExportError, attach_card, robustness_results, write_card_json
from training.cli import start_command
from training.data import DatasetError, Split, scan_dataset
from training.models import MODELS
from training.quantize import quantize_export
from training.scoring import load_checkpoint
from training.train import best_epoch

log = logging.getLogger("training.export")
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 3, 16)


class ProbabilityModel(nn.Module):
    """The classifier with its sigmoid inside, so every consumer reads the same number."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x)).reshape(-1)


def export_model(model: nn.Module, card: ModelCard, out_dir: Path, real_crops: np.ndarray | None = None) -> Path:
    """Write <out_dir>/<card.name>.onnx and its card .json after checking them; refuse on any mismatch."""
    wrapped = ProbabilityModel(model).eval().cpu()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{card.name}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / target.name
        _to_onnx(wrapped, card.preprocess.input_size, staged)
        attach_card(staged, card)
        worst = parity(wrapped, staged, card.preprocess, real_crops)
        if worst > PARITY_TOLERANCE:
            raise ExportError(f"ONNX and PyTorch differ by {worst:.2e} (> {PARITY_TOLERANCE}) in fake probability; nothing written")
        staged.replace(target)
    write_card_json(target, card)
    log.info("wrote %s (max |onnx - torch| = %.1e)", target, worst)
    return target


def _to_onnx(wrapped: nn.Module, size: int, path: Path) -> None:
    example = torch.zeros(2, 3, size, size)
    names = {"input_names": ["input"], "output_names": ["fake_probability"]}
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(wrapped, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},), opset_version=18, verbose=False, **names)
    except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter for graphs dynamo cannot trace
        log.warning("dynamo export failed (%s); using the TorchScript exporter", exc.__class__.__name__)
        torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "fake_probability": {0: "batch"}}, **names)
    onnx.checker.check_model(str(path), full_check=True)


def parity(wrapped: nn.Module, path: Path, spec: PreprocessSpec, real_crops: np.ndarray | None) -> float:
    """Largest |ONNX - PyTorch| fake probability over random and real inputs at several batch sizes."""
    session = OnnxClassifier(path, device="cpu")
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in PARITY_BATCHES:
        inputs = [torch.randn(batch, 3, spec.input_size, spec.input_size, generator=generator).numpy()]
        if real_crops is not None and len(real_crops):
            inputs.append(to_input(real_crops[:batch], spec))
        for x in inputs:
            with torch.no_grad():
                expected = wrapped(torch.from_numpy(x)).numpy()
            worst = max(worst, float(np.abs(session.predict(x) - expected).max()))
    return worst


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt from python -m training.train")
    p.add_argument("--name", required=True, help="export name: writes <out>/<name>.onnx and <name>.json")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "exports", help="folder for the export (default: exports/)")
    p.add_argument("--data", type=Path, action="append", default=[], help="dataset folders of the checkpoint's split: enables threshold choice and test metrics")
    p.add_argument("--tta", default=",".join(f"{a:g}" for a in get_settings().angles_for()),
                   help="rotations the threshold, calibration and metrics are fitted and measured at, recorded in the card, where the "
                        "service takes its default from (default: FACECHECK_TTA_ANGLES, else -15,0,15)")
    p.add_argument("--mirror", action="store_true", help="classify each rotation's crop mirrored too and average the two (the card's "
                   "tta_mirror): twice the classifier's work per rotation; the threshold, calibration and metrics are fitted that way")
    p.add_argument("--version", help="model version (default: <date>-<weights digest>)")
    p.add_argument("--quantize", choices=["int8"], help="also write <name>-int8.onnx, with its accuracy change on the test split in its card "
                   "(needs --data; python -m training.quantize does the same for an existing export)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.export", argv)
    for noisy in ("onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    args.command = command
    try:
        return _export(args)
    except (ExportError, CalibrationError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    if args.quantize and not args.data:
        raise ExportError("--quantize needs --data: the calibration crops and the accuracy change come from the split")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if state.get("model_name") not in MODELS:
        raise ExportError(f"{state.get('model_name')!r} is not an exportable network (exportable: {', '.join(MODELS)})")
    model, state = load_checkpoint(args.checkpoint, torch.device("cpu"))
    spec = PreprocessSpec.model_validate(state["preprocess"])
    weights_digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values())).hexdigest()
    card = ModelCard(
        name=args.name, architecture=state["model_name"], preprocess=spec,
        version=args.version or f"{dt.date.today():%Y.%m.%d}-{weights_digest[:8]}",
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        threshold=float(state.get("threshold", 0.5)), threshold_rule=state.get("threshold_rule", "default 0.5"),
        tta_mirror=args.mirror, training={**_training_info(state, args.checkpoint), "tta_angles": list(parse_angles(args.tta))},
        command=args.command,
    )
    split_file = args.checkpoint.parent / "split.json"
    real_crops = None
    if args.data:
        split = Split.load(split_file)
        samples = [s for folder in args.data for s in scan_dataset(folder)]
        real_crops = CropCache().crop_set(split.select(samples, "val")[:64], spec, desc="parity crops").crops
        card.training["split_sizes"] = split.sizes()
    path = export_model(model, card, args.out, real_crops)
    if args.data:
        split.save(args.out / f"{args.name}.split.json")
        card = calibrate_model(path, args.data, split, parse_angles(args.tta), args.checkpoint.parent / "calibration", command=args.command)
        _print_metrics(card)
    if args.quantize:
        print(quantize_export(path, args.data, None, 256, args.tta, args.command + " (its int8 step)"))
    print(path)
    return 0


def _training_info(state: dict, checkpoint: Path) -> dict[str, Any]:
    history = state.get("history", [])
    best = best_epoch(history)
    return {"datasets": state.get("datasets", []), "seed": state.get("seed"), "initial_weights": state.get("origin"),
            "epochs_run": len(history), "best_epoch": best.get("epoch"), "val_roc_auc": best.get("val_roc_auc"),
            "val_auc_per_set": best.get("val_auc_per_set"),
            "command": " && ".join(state.get("recipe") or [state.get("command") or ""]), "checkpoint": str(checkpoint)}


def _print_metrics(card: ModelCard) -> None:
    print(f"threshold {card.threshold:.4f} ({card.threshold_rule})")
    print(f"{'test split':<28} {'n':>5} {'acc':>6} {'auc':>6} {'f1':>6} {'fpr':>6}")
    for name, m in card.metrics["test"].items():
        auc = "-" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
        fpr = "-" if m["false_positive_rate"] is None else f"{m['false_positive_rate']:.4f}"
        print(f"{name:<28} {m['n']:>5} {m['accuracy']:>6.4f} {auc:>6} {m['f1']:>6.4f} {fpr:>6}")
    print("\nre-processed test photos (ROC-AUC, real photos called fake, fakes caught):")
    print(robustness.table(robustness_results(card.metrics)))
    print(f"\ncalibration: {card.calibration.method}; uncertain band [{card.uncertain_band.low:.4f}, {card.uncertain_band.high:.4f})")
    print(calibration_table(card))


if __name__ == "__main__":
    raise SystemExit(main())
