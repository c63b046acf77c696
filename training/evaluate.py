"""Evaluate a checkpoint (.pt) or an exported model (.onnx) on folder datasets.

    python -m training.evaluate --model runs/lite0/best.pt --data ../shared/data/tpdne128 --data ../shared/data/utk-real
    python -m training.evaluate --model exports/default.onnx --data ../shared/data/rff --tta-sets "0;-15,0,15"

By default only the test part of each dataset is used, as recorded in the split file that was written
with the model (`split.json` beside a checkpoint, `<name>.split.json` beside an export). A dataset the
split file does not know (your own folder) is evaluated in full, and a note says so.

An .onnx model goes through the service's own pipeline (decode, MTCNN faces, crops, rotations,
ONNX Runtime, the card's calibration, most-fake face), so its numbers are the service's numbers. A
checkpoint is scored on the cached crop of each image's best face, exactly as in training.

Prints a table per dataset (and one per TTA angle set with --tta-sets) and writes metrics.json, predictions.csv (one row per photo: its
probability, the answer it gets at the threshold and band evaluated, and for an export its deciding face's width in pixels), roc.png,
confusion_<dataset>.png, reliability_<dataset>.png and wrong_<dataset>.png (the most confidently wrong
faces) to --out. Where the model's card has an uncertain band, the table also gives the share of photos
in it and the accuracy of the confident answers alone, next to the accuracy of every answer forced to real
or fake at the threshold. For an export, a further table asks whether a face's size moves the verdict: per
dataset and class, the share called fake among the smallest quarter of faces (by width in the photo's
pixels), the middle half and the largest quarter.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from service.argv import join_option_values
from service.calibration import UncertainBand
from service.config import parse_angles as parse_comma_angles
from service.contract import ModelLoadError
from training import baselines
from training.chains import reencode_chain
from training.data import SPLITS, DatasetError, Sample, Split, scan_dataset
from training.metrics import binary_metrics, by_face_size, chance_ece, uncertain_metrics
from training.models import UnknownModel
from training.report import DatasetResult, Report, print_report, write_outputs
from training.scoring import (AngleSet, EvaluationError, Predictions, Reencode, angle_key, angle_label, default_out, default_split_file,
                              inspect_model, predict_sets)

# --- the evaluation -----------------------------------------------------------------------------------


def scan_folders(folders: Sequence[Path]) -> dict[str, tuple[Path, list[Sample]]]:
    datasets: dict[str, tuple[Path, list[Sample]]] = {}
    for folder in folders:
        folder = Path(folder)
        samples = scan_dataset(folder)
        name = folder.name
        if name in ("", ".", ".."):  # `--data .`: name the dataset after the folder it means
            name = folder.resolve().name
            samples = [Sample(s.path, s.label, name) for s in samples]
        if name in datasets:
            raise EvaluationError(f"two dataset folders are named {name!r} ({datasets[name][0]} and {folder}); datasets are told apart by folder name")
        datasets[name] = (folder, samples)
    return datasets


def choose_samples(datasets: dict[str, tuple[Path, list[Sample]]], split: str, split_file: Path | None,
                   model_path: Path, notes: list[str]) -> tuple[dict[str, tuple[list[Sample], str]], Path | None]:
    """The samples to evaluate per dataset and a phrase saying which they are."""
    if split != "all" and split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}, all")
    if split == "all":
        return {name: (samples, "all images") for name, (_, samples) in datasets.items()}, None
    path = Path(split_file) if split_file else default_split_file(model_path)
    if not path.is_file():
        if split_file:
            raise EvaluationError(f"split file not found: {path}")
        notes.append(f"no split file at {path}: every image of every dataset is evaluated (it may include training images)")
        return {name: (samples, "all images: no split file") for name, (_, samples) in datasets.items()}, None
    try:
        recorded = Split.load(path)
    except Exception as exc:  # noqa: BLE001 - JSON or schema errors: one line for the user
        raise EvaluationError(f"{path} is not a split file ({exc.__class__.__name__})") from exc
    chosen = {}
    for name, (folder, samples) in datasets.items():
        if name not in recorded.datasets:
            notes.append(f"{name}: not in the split file {path.name}, so all {len(samples)} images are evaluated")
            chosen[name] = (samples, "all images: not in the split file")
            continue
        selected = recorded.select(samples, split)
        expected = len(recorded.datasets[name][split])
        if not selected:
            raise EvaluationError(f"{folder}: none of the {expected} {split} files recorded for {name!r} in {path} is in this folder")
        if len(selected) < expected:
            notes.append(f"{name}: {expected - len(selected)} of the {expected} {split} files recorded in {path.name} are missing from {folder}")
        chosen[name] = (selected, f"{split} split")
    return chosen, path


def run_evaluation(model_path: Path, folders: Sequence[Path], split: str = "test", split_file: Path | None = None,
                   angles: Sequence[float] | None = None, threshold: float | None = None, device: str = "auto",
                   tta_sets: Sequence[Sequence[float]] = (), workers: int = 2, reencoded: Reencode | None = None,
                   band: str | None = None) -> Report:
    model_path = Path(model_path)
    if not folders:
        raise EvaluationError("no dataset folder given (--data FOLDER)")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda, but torch sees no CUDA GPU here")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"--threshold must lie in [0, 1], got {threshold}")
    info = inspect_model(model_path, band)
    notes: list[str] = []
    datasets = scan_folders(folders)
    chosen, used_split_file = choose_samples(datasets, split, split_file, model_path, notes)
    main_key = angle_key(info.angles if angles is None else angles)
    compared = list(dict.fromkeys(angle_key(s) for s in tta_sets))
    everything = [s for samples, _ in chosen.values() for s in samples]
    chain = reencode_chain(*reencoded) if reencoded else None
    by_set = predict_sets(model_path, everything, [main_key, *compared], device, workers=workers, chain=chain)
    cutoff = info.threshold if threshold is None else float(threshold)
    results = {}
    for name, (_, selection) in chosen.items():
        per_set = {s: _only(p, name) for s, p in by_set.items()}
        predictions = per_set[main_key]
        metrics = describe(predictions, cutoff, info.uncertain_band)
        metrics.update(folder=str(datasets[name][0]), selection=selection, angles=list(main_key))
        if not metrics["n"]:
            notes.append(f"{name}: no readable image to evaluate")
        tta = {}
        for angle_set in compared:
            p = per_set[angle_set]
            m = binary_metrics(p.labels, p.probs, cutoff)
            tta[angle_label(angle_set)] = {k: m[k] for k in ("roc_auc", "accuracy", "balanced_accuracy", "false_positive_rate", "ece")}
        results[name] = DatasetResult(name, datasets[name][0], selection, predictions, metrics, tta)
    if info.threshold_rule.startswith("none recorded") and threshold is None:
        notes.append(f"{model_path.name} records no threshold: 0.5 is used")
    source = f"the model's ({info.threshold_rule})" if threshold is None else "--threshold"
    return Report(info, cutoff, source, split, used_split_file, main_key, compared, results, notes, reencoded)


def evaluate(model_path: Path, folders: Sequence[Path], split: str = "test", split_file: Path | None = None,
             angles: Sequence[float] | None = None, threshold: float | None = None, device: str = "auto", workers: int = 2,
             reencoded: Reencode | None = None) -> dict:
    """{dataset name: metrics} for a model on folder datasets (see the module docstring)."""
    return run_evaluation(model_path, folders, split, split_file, angles, threshold, device, workers=workers, reencoded=reencoded).metrics


def _only(predictions: Predictions, dataset: str) -> Predictions:
    keep = np.array([s.dataset == dataset for s in predictions.samples], dtype=bool)
    face_px = predictions.face_px[keep] if predictions.face_px is not None else None
    return Predictions([s for s in predictions.samples if s.dataset == dataset], predictions.probs[keep], predictions.face_found[keep],
                       predictions.threshold, [(s, e) for s, e in predictions.unreadable if s.dataset == dataset], face_px=face_px)


def describe(predictions: Predictions, threshold: float, band: UncertainBand | None = None) -> dict:
    """binary_metrics and uncertain_metrics, the ECE a calibrated model shows here by chance (chance_ece), plus what
    happened on the way: faces found, files that could not be read; for an export, the verdicts by face size
    (by_face_size)."""
    metrics = binary_metrics(predictions.labels, predictions.probs, threshold) | uncertain_metrics(predictions.labels, predictions.probs, threshold, band)
    metrics["ece_by_chance"] = chance_ece(predictions.probs) if len(predictions.probs) else None
    metrics["faces_found"] = int(np.sum(predictions.face_found))
    metrics["no_face"] = int(len(predictions.samples) - metrics["faces_found"])
    metrics["unreadable"] = [{"file": str(sample.path), "error": error} for sample, error in predictions.unreadable]
    metrics["classes"] = sorted({"fake" if s.label else "real" for s in predictions.samples})
    if predictions.face_px is not None:
        metrics["by_face_size"] = by_face_size(predictions.labels, predictions.probs, predictions.face_px, threshold)
    return metrics


# --- command line -------------------------------------------------------------------------------------


def parse_angles(text: str) -> AngleSet:
    try:
        return angle_key(parse_comma_angles(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"angles must be comma-separated degrees such as -15,0,15, got {text!r}") from None


def parse_reencode(text: str) -> Reencode:
    try:
        size, quality = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--reencode takes SIZE,QUALITY such as 256,85, got {text!r}") from None
    if not (16 <= size <= 4096 and 1 <= quality <= 100):
        raise argparse.ArgumentTypeError(f"--reencode: size 16-4096 and quality 1-100, got {text!r}")
    return size, quality


def parse_angle_sets(text: str) -> list[AngleSet]:
    sets = [parse_angles(part) for part in text.split(";") if part.strip()]
    if not sets:
        raise argparse.ArgumentTypeError(f"no angle set in {text!r}; write sets like \"0;-15,0,15\"")
    return sets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, metavar="PATH",
                   help="a training checkpoint (.pt, e.g. runs/NAME/best.pt) or an exported model (.onnx, e.g. exports/NAME.onnx)")
    p.add_argument("--data", type=Path, action="append", required=True, metavar="FOLDER",
                   help="dataset folder with real/ and/or fake/ subfolders; repeat for several (one table row each)")
    p.add_argument("--split", default="test", choices=[*SPLITS, "all"],
                   help="which part of each dataset to evaluate, as recorded in the split file (default: test); all = every image")
    p.add_argument("--split-file", type=Path, metavar="FILE",
                   help="the split to use (default: split.json beside a checkpoint, <name>.split.json beside an export); "
                        "datasets it does not list are evaluated in full")
    p.add_argument("--tta", type=parse_angles, default=None, metavar="ANGLES",
                   help="test-time rotations in degrees, averaged per face, e.g. -15,0,15 or 0 for none "
                        "(default: those the service uses with the model: FACECHECK_TTA_ANGLES, else the card's)")
    p.add_argument("--reencode", type=parse_reencode, metavar="SIZE,QUALITY",
                   help="(.onnx only) first resize every image to SIZE x SIZE and re-encode it as JPEG at QUALITY, e.g. 256,85: "
                        "if the scores hold, the model judges faces, not a dataset's resolution or compression")
    p.add_argument("--tta-sets", type=parse_angle_sets, default=[], metavar="SETS",
                   help="also compare several rotation sets, separated by ';', e.g. \"0;-15,0,15;-30,-15,0,15,30\": "
                        "prints a table of ROC-AUC / accuracy per dataset and set")
    p.add_argument("--band", metavar="card|off|LOW,HIGH",
                   help="(.onnx only) the uncertain band to answer with, as FACECHECK_UNCERTAIN_BAND takes it, e.g. 0.13,0.9 to see what a "
                        "stricter fake edge costs on the validation split before serving it (default: the service's: that setting, else the card's)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where metrics.json and the PNGs go (default: <checkpoint folder>/eval, or runs/eval-<name> for an .onnx)")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="call a face fake when its fake probability is >= X (default: the model's own, chosen on validation)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="processes for face detection and cropping where the crop cache is cold (default: 2; 1 = in this process)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs (default: auto, CUDA when present)")
    return p.parse_args(join_option_values(sys.argv[1:] if argv is None else argv, ("--tta", "--tta-sets")))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_evaluation(args.model, args.data, args.split, args.split_file, args.tta, args.threshold, args.device, args.tta_sets,
                                args.workers, args.reencode, args.band)
    except (EvaluationError, DatasetError, ModelLoadError, UnknownModel, baselines.BaselineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    out = args.out or default_out(args.model)
    written = write_outputs(report, out)
    print(f"\nwrote {', '.join(p.name for p in written)} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
