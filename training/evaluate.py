"""Evaluate a checkpoint (.pt) or an exported model (.onnx) on folder datasets.

    python -m training.evaluate --model runs/lite0/best.pt --data ../shared/data/tpdne128 --data ../shared/data/utk-real
    python -m training.evaluate --model exports/default.onnx --data ../shared/data/rff --tta-sets "0;-15,0,15"

By default only the test part of each dataset is used, as recorded in the split file that was written
with the model (`split.json` beside a checkpoint, `<name>.split.json` beside an export). A dataset the
split file does not know (your own folder) is evaluated in full, and a note says so.

An .onnx model goes through the service's own pipeline (decode, MTCNN faces, crops, rotations,
ONNX Runtime, most-fake face), so its numbers are the service's numbers. A checkpoint is scored on the
cached crop of each image's best face, exactly as in training.

Prints a table per dataset (and one per TTA angle set with --tta-sets) and writes metrics.json, roc.png,
confusion_<dataset>.png and wrong_<dataset>.png (the most confidently wrong faces) to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from service.argv import join_option_values
from service.config import REPO_ROOT, get_settings
from service.config import parse_angles as parse_comma_angles
from service.contract import ModelLoadError
from service.imaging import ImageError, read_image_file
from service.onnx_model import OnnxClassifier
from service.pipeline import Pipeline
from service.preprocess import PreprocessSpec
from training import baselines, plots
from training.augment import reencode
from training.cache import CachingDetector, CropCache
from training.data import SPLITS, DatasetError, Sample, Split, scan_dataset
from training.metrics import binary_metrics
from training.models import UnknownModel, create_model
from training.predict import device_for, predict_probs

CHECKPOINT_SUFFIXES = (".pt", ".pth")
AngleSet = tuple[float, ...]
Reencode = tuple[int, int]  # side in pixels, JPEG quality
Scorer = Callable[[np.ndarray, float], np.ndarray]  # uint8 NHWC crops, one angle -> fake probabilities


class EvaluationError(ValueError):
    """Something the user asked for that cannot be evaluated, with a one-line reason."""


@dataclass
class Predictions:
    samples: list[Sample]
    probs: np.ndarray
    face_found: np.ndarray
    threshold: float
    unreadable: list[tuple[Sample, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def datasets(self) -> list[str]:
        return [s.dataset for s in self.samples]


def angle_key(angles: Sequence[float]) -> AngleSet:
    """The canonical form of a set of test-time rotations; none means the upright crop alone."""
    return tuple(float(a) for a in angles) or (0.0,)


def angle_label(angles: Sequence[float]) -> str:
    return ",".join(f"{a:g}" for a in angle_key(angles))


# --- predictions --------------------------------------------------------------------------------------


def predict_onnx(model_path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate",
                 reencoded: Reencode | None = None) -> Predictions:
    key = angle_key(angles)
    return predict_onnx_sets(model_path, samples, [key], device, desc, reencoded)[key]


def predict_onnx_sets(model_path: Path, samples: Sequence[Sample], angle_sets: Sequence[Sequence[float]], device: str = "auto",
                      desc: str = "evaluate", reencoded: Reencode | None = None) -> dict[AngleSet, Predictions]:
    """The service pipeline once with every angle of every set; each set's score is recombined from the
    per-face, per-angle probabilities exactly as the pipeline would: mean over angles, most-fake face.

    `reencoded=(size, quality)` first turns every image into a size x size JPEG of that quality."""
    sets = list(dict.fromkeys(angle_key(a) for a in angle_sets))
    union = tuple(sorted({a for s in sets for a in s}))
    classifier = OnnxClassifier(model_path, device)
    settings = get_settings()
    pipeline = Pipeline(classifier.card, CachingDetector(), union, settings.max_faces)
    kept, found, unreadable = [], [], []
    probs: dict[AngleSet, list[float]] = {s: [] for s in sets}
    for sample in tqdm(samples, desc=desc, unit="img", mininterval=2):
        try:
            image = read_image_file(str(sample.path), settings.max_bytes, settings.max_pixels)
        except ImageError as exc:
            unreadable.append((sample, str(exc)))
            continue
        if reencoded:
            image = reencode(image, *reencoded)
        result = pipeline.run(image, classifier.predict_crops, file=str(sample.path))
        units = [face.tta for face in result.faces if face.classified] or [result.whole_image or {}]
        for angle_set in sets:
            probs[angle_set].append(max(float(np.mean([unit[f"{a:g}"] for a in angle_set])) for unit in units))
        kept.append(sample)
        found.append(result.face_found)
    threshold = classifier.card.threshold
    return {s: Predictions(kept, np.array(probs[s], dtype=np.float64), np.array(found, dtype=bool), threshold, unreadable) for s in sets}


def load_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint dict from training.train (or a baseline), or an EvaluationError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many unrelated types for a bad file
        raise EvaluationError(f"{path} is not a readable checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(state, dict) or "model_name" not in state or "preprocess" not in state:
        raise EvaluationError(f"{path} is not a facecheck checkpoint (no model_name/preprocess): write one with `python -m training.train`")
    return state


def load_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    state = load_state(path, device)
    baselines.require_exportable(state["model_name"])
    return _torch_model(state, device), state


def _torch_model(state: dict, device: torch.device) -> torch.nn.Module:
    model, _ = create_model(state["model_name"], pretrained="none")
    model.load_state_dict(state["model"])
    return model.to(device, memory_format=torch.channels_last).eval()


def checkpoint_scorer(state: dict, spec: PreprocessSpec, device: torch.device) -> Scorer:
    """Fake probabilities of crops at one rotation: the network, or a baseline's features + classifier."""
    if baselines.is_baseline(state["model_name"]):
        return baselines.scorer(state, spec, device)
    model = _torch_model(state, device)
    return lambda crops, angle: predict_probs(model, crops, spec, (angle,), device=device)


def predict_checkpoint(path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    key = angle_key(angles)
    return predict_checkpoint_sets(path, samples, [key], device, desc)[key]


def predict_checkpoint_sets(path: Path, samples: Sequence[Sample], angle_sets: Sequence[Sequence[float]], device: str = "auto",
                            desc: str = "evaluate", workers: int = 2) -> dict[AngleSet, Predictions]:
    """Crops once, every distinct angle once, then each set's mean over its angles."""
    torch_device = device_for(device)
    state = load_state(Path(path), torch_device)
    spec = PreprocessSpec.model_validate(state["preprocess"])
    score = checkpoint_scorer(state, spec, torch_device)
    crops = CropCache().crop_set(list(samples), spec, workers, desc=f"{desc} crops")
    sets = list(dict.fromkeys(angle_key(a) for a in angle_sets))
    per_angle = {}
    for angle in sorted({a for s in sets for a in s}):
        chunks = range(0, len(crops.crops), 256)
        parts = [score(crops.crops[i:i + 256], angle) for i in tqdm(chunks, desc=f"{desc} ({angle:g} deg)", unit="batch", mininterval=2)]
        per_angle[angle] = np.concatenate(parts) if parts else np.zeros(0)
    threshold = float(state.get("threshold", 0.5))
    return {s: Predictions(crops.samples, np.mean([per_angle[a] for a in s], axis=0), crops.face_found, threshold, crops.unreadable) for s in sets}


def predict(model_path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    if Path(model_path).suffix == ".onnx":
        return predict_onnx(Path(model_path), samples, angles, device, desc)
    return predict_checkpoint(Path(model_path), samples, angles, device, desc)


def predict_sets(model_path: Path, samples: Sequence[Sample], angle_sets: Sequence[Sequence[float]], device: str = "auto",
                 desc: str = "evaluate", workers: int = 2, reencoded: Reencode | None = None) -> dict[AngleSet, Predictions]:
    """Predictions for each set of angles, every distinct angle computed once."""
    if Path(model_path).suffix == ".onnx":
        return predict_onnx_sets(Path(model_path), samples, angle_sets, device, desc, reencoded)
    if reencoded:
        raise EvaluationError("--reencode works on exported .onnx models, which see whole photos; a checkpoint sees cached crops")
    return predict_checkpoint_sets(Path(model_path), samples, angle_sets, device, desc, workers)


# --- what a model is ----------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    path: Path
    kind: str  # "checkpoint" or "onnx"
    name: str
    preprocess: PreprocessSpec
    threshold: float
    threshold_rule: str


def inspect_model(model_path: Path) -> ModelInfo:
    """Read what evaluation needs to know about a model file, without scoring anything."""
    path = Path(model_path)
    if not path.is_file():
        raise EvaluationError(f"model file not found: {path}")
    if path.suffix == ".onnx":
        from service.contract import card_from_metadata

        try:
            import onnx

            metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for a non-ONNX file
            raise EvaluationError(f"{path} is not a loadable ONNX model ({exc.__class__.__name__})") from exc
        card = card_from_metadata(metadata, path)
        return ModelInfo(path, "onnx", card.name, card.preprocess, card.threshold, card.threshold_rule or "from the model card")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise EvaluationError(f"unknown model file {path}: expected a training checkpoint (.pt) or an exported model (.onnx)")
    state = load_state(path)
    rule = state.get("threshold_rule", "") if "threshold" in state else "none recorded in the checkpoint (not a finished best.pt?): 0.5"
    return ModelInfo(path, "checkpoint", state["model_name"], PreprocessSpec.model_validate(state["preprocess"]),
                     float(state.get("threshold", 0.5)), rule)


def default_split_file(model_path: Path) -> Path:
    """split.json beside a checkpoint; exports/<name>.split.json beside exports/<name>.onnx."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return model_path.with_name(f"{model_path.stem}.split.json")
    return model_path.parent / "split.json"


def default_out(model_path: Path) -> Path:
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return REPO_ROOT / "runs" / f"eval-{model_path.stem}"
    return model_path.parent / "eval"


# --- the evaluation -----------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    name: str
    folder: Path
    selection: str
    predictions: Predictions
    metrics: dict
    tta: dict[str, dict] = field(default_factory=dict)  # angle label -> {"roc_auc", "accuracy", ...}


@dataclass
class Report:
    model: ModelInfo
    threshold: float
    threshold_source: str
    split: str
    split_file: Path | None
    angles: AngleSet
    tta_sets: list[AngleSet]  # the sets compared with --tta-sets; empty when not asked
    datasets: dict[str, DatasetResult]
    notes: list[str]
    reencoded: Reencode | None = None

    @property
    def metrics(self) -> dict[str, dict]:
        return {name: result.metrics for name, result in self.datasets.items()}

    def to_json(self) -> dict:
        return {
            "model": str(self.model.path), "model_name": self.model.name, "kind": self.model.kind,
            "threshold": self.threshold, "threshold_source": self.threshold_source,
            "split": self.split, "split_file": str(self.split_file) if self.split_file else None,
            "angles": list(self.angles), "preprocess": self.model.preprocess.model_dump(),
            "reencoded": {"size": self.reencoded[0], "jpeg_quality": self.reencoded[1]} if self.reencoded else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "datasets": self.metrics,
            "tta": {name: result.tta for name, result in self.datasets.items()} if self.tta_sets else {},
            "notes": self.notes,
        }


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
                   tta_sets: Sequence[Sequence[float]] = (), workers: int = 2, reencoded: Reencode | None = None) -> Report:
    model_path = Path(model_path)
    if not folders:
        raise EvaluationError("no dataset folder given (--data FOLDER)")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("--device cuda, but torch sees no CUDA GPU here")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"--threshold must lie in [0, 1], got {threshold}")
    info = inspect_model(model_path)
    notes: list[str] = []
    datasets = scan_folders(folders)
    chosen, used_split_file = choose_samples(datasets, split, split_file, model_path, notes)
    main_key = angle_key(get_settings().tta_angles if angles is None else angles)
    compared = list(dict.fromkeys(angle_key(s) for s in tta_sets))
    everything = [s for samples, _ in chosen.values() for s in samples]
    by_set = predict_sets(model_path, everything, [main_key, *compared], device, workers=workers, reencoded=reencoded)
    cutoff = info.threshold if threshold is None else float(threshold)
    results = {}
    for name, (_, selection) in chosen.items():
        per_set = {s: _only(p, name) for s, p in by_set.items()}
        predictions = per_set[main_key]
        metrics = describe(predictions, cutoff)
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
    return Predictions([s for s in predictions.samples if s.dataset == dataset], predictions.probs[keep], predictions.face_found[keep],
                       predictions.threshold, [(s, e) for s, e in predictions.unreadable if s.dataset == dataset])


def describe(predictions: Predictions, threshold: float) -> dict:
    """binary_metrics plus what happened on the way: faces found, files that could not be read."""
    metrics = binary_metrics(predictions.labels, predictions.probs, threshold)
    metrics["faces_found"] = int(np.sum(predictions.face_found))
    metrics["no_face"] = int(len(predictions.samples) - metrics["faces_found"])
    metrics["unreadable"] = [{"file": str(sample.path), "error": error} for sample, error in predictions.unreadable]
    metrics["classes"] = sorted({"fake" if s.label else "real" for s in predictions.samples})
    return metrics


# --- output -------------------------------------------------------------------------------------------

COLUMNS = [("n", "n"), ("accuracy", "acc"), ("balanced_accuracy", "bal acc"), ("precision", "prec"), ("recall", "recall"),
           ("f1", "F1"), ("macro_f1", "macro F1"), ("roc_auc", "ROC-AUC"), ("false_positive_rate", "FPR real"), ("ece", "ECE")]


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _shown(metrics: dict, key: str) -> object:
    """A metric for the table: precision, recall and F1 of "fake" mean nothing on a folder without fakes."""
    if key in ("precision", "recall", "f1") and metrics["per_class"]["fake"]["support"] == 0:
        return None
    return metrics[key]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def metrics_table(report: Report) -> str:
    rows = [[name, *(_cell(_shown(r.metrics, key)) for key, _ in COLUMNS)] for name, r in report.datasets.items()]
    return format_table(["dataset", *(title for _, title in COLUMNS)], rows)


def tta_table(report: Report) -> str:
    labels = [angle_label(s) for s in report.tta_sets]
    rows = []
    for name, result in report.datasets.items():
        rows.append([name, *(f"{_cell(result.tta[label]['roc_auc'])} / {_cell(result.tta[label]['accuracy'])}" for label in labels)])
    return format_table(["dataset \\ angles (AUC / acc)", *labels], rows)


def write_outputs(report: Report, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    (out / "metrics.json").write_text(json.dumps(report.to_json(), indent=1))
    curves = {name: (r.predictions.labels, r.predictions.probs) for name, r in report.datasets.items()}
    if any(len(set(labels.tolist())) == 2 for labels, _ in curves.values()):
        plots.roc(curves, out / "roc.png")
        written.append(out / "roc.png")
    for name, r in report.datasets.items():
        plots.confusion_matrix(r.metrics["confusion"], f"{name} ({r.metrics['n']} images, t={report.threshold:.2f})", out / f"confusion_{name}.png")
        written.append(out / f"confusion_{name}.png")
        if _wrong_faces(r, report.model.preprocess, report.threshold, out / f"wrong_{name}.png"):
            written.append(out / f"wrong_{name}.png")
    return written


def _wrong_faces(result: DatasetResult, spec: PreprocessSpec, threshold: float, path: Path, count: int = 16) -> bool:
    """The most confidently wrong faces at the threshold, as the model saw them (crops from the crop cache)."""
    p = result.predictions
    wrong = (p.probs >= threshold).astype(int) != p.labels
    order = [int(i) for i in np.argsort(-np.abs(p.probs - threshold), kind="stable") if wrong[i]][:count]
    path.unlink(missing_ok=True)
    if not order:
        return False
    samples = [p.samples[i] for i in order]
    crops = CropCache().crop_set(samples, spec, workers=1, desc=f"wrong {result.name}")
    index = {s: i for i, s in enumerate(crops.samples)}
    shown = [i for i, s in zip(order, samples) if s in index]
    if not shown:
        return False
    plots.confidently_wrong(crops.crops[[index[p.samples[i]] for i in shown]], p.labels[shown], p.probs[shown],
                            [p.samples[i].key for i in shown], path, count, threshold)
    return True


def print_report(report: Report) -> None:
    model = report.model
    print(f"\nmodel {model.path} ({model.name}), threshold {report.threshold:.3f}, split: {report.split}"
          + (f" (from {report.split_file})" if report.split_file else "") + f", angles {angle_label(report.angles)}"
          + (f", images re-encoded as {report.reencoded[0]}px JPEG q{report.reencoded[1]}" if report.reencoded else ""))
    print(metrics_table(report))
    for name, r in report.datasets.items():
        m = r.metrics
        line = f"{name}: {m['n']} images, {r.selection}; {m['faces_found']} with a face found, {len(m['unreadable'])} unreadable"
        if m["roc_auc"] is None and m["false_positive_rate"] is not None:
            line += f"; real only: {m['false_positive_rate']:.1%} of real photos called fake"
        print(line)
        for item in m["unreadable"][:5]:
            print(f"  unreadable: {item['file']}: {item['error']}")
        if len(m["unreadable"]) > 5:
            print(f"  ... and {len(m['unreadable']) - 5} more (see metrics.json)")
    if report.tta_sets:
        print("\ntest-time rotation sets (ROC-AUC / accuracy):")
        print(tta_table(report))
    for note in report.notes:
        print(f"note: {note}")


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
                        "(default: the service's FACECHECK_TTA_ANGLES, -15,0,15, as in the model card)")
    p.add_argument("--reencode", type=parse_reencode, metavar="SIZE,QUALITY",
                   help="(.onnx only) first resize every image to SIZE x SIZE and re-encode it as JPEG at QUALITY, e.g. 256,85: "
                        "if the scores hold, the model judges faces, not a dataset's resolution or compression")
    p.add_argument("--tta-sets", type=parse_angle_sets, default=[], metavar="SETS",
                   help="also compare several rotation sets, separated by ';', e.g. \"0;-15,0,15;-30,-15,0,15,30\": "
                        "prints a table of ROC-AUC / accuracy per dataset and set")
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
                                args.workers, args.reencode)
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
