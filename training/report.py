"""The evaluation report of `python -m training.evaluate`: its tables, metrics.json and the PNGs."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from service.calibration import label as answer
from service.preprocess import PreprocessSpec
from training import plots
from training.cache import CropCache
from training.metrics import FACE_SIZE_GROUPS
from training.scoring import AngleSet, ModelInfo, Predictions, Reencode, angle_label

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
            "uncertain_band": self.model.uncertain_band.model_dump() if self.model.uncertain_band else None,
            "uncertain_band_source": self.model.band_source,
            "split": self.split, "split_file": str(self.split_file) if self.split_file else None,
            "angles": list(self.angles), "preprocess": self.model.preprocess.model_dump(),
            "reencoded": {"size": self.reencoded[0], "jpeg_quality": self.reencoded[1]} if self.reencoded else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "datasets": self.metrics,
            "tta": {name: result.tta for name, result in self.datasets.items()} if self.tta_sets else {},
            "notes": self.notes,
        }


# --- output -------------------------------------------------------------------------------------------

COLUMNS = [("n", "n"), ("accuracy", "acc"), ("balanced_accuracy", "bal acc"), ("precision", "prec"), ("recall", "recall"),
           ("f1", "F1"), ("macro_f1", "macro F1"), ("roc_auc", "ROC-AUC"), ("false_positive_rate", "FPR real"), ("ece", "ECE"),
           ("ece_by_chance", "ECE by chance"), ("uncertain_share", "uncertain"), ("confident_accuracy", "conf acc"),
           ("real_answered_fake", "reals answered fake"), ("fake_answered_fake", "fakes answered fake")]
BAND_COLUMNS = ("uncertain_share", "confident_accuracy", "real_answered_fake", "fake_answered_fake")


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _shown(metrics: dict, key: str) -> object:
    """A metric for the table: precision, recall and F1 of "fake" mean nothing on a folder without fakes, nor the
    band's columns for a model without an uncertain band."""
    if key in ("precision", "recall", "f1") and metrics["per_class"]["fake"]["support"] == 0:
        return None
    if key in BAND_COLUMNS and metrics.get("uncertain_band") is None:
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


def face_size_table(report: Report) -> str | None:
    """Per dataset and class, the share called fake among the smallest, middle and largest faces (metrics'
    by_face_size); None where no dataset has it (a checkpoint scores cached crops, which keep no size)."""
    rows = []
    for name, result in report.datasets.items():
        for truth, row in result.metrics.get("by_face_size", {}).items():
            low, middle, high = row["width_quartiles_px"]
            rows.append([name, truth, str(row["n"]), f"{row['width_range_px'][0]:.0f}-{row['width_range_px'][1]:.0f}",
                         f"{low:.0f} / {middle:.0f} / {high:.0f}",
                         *("–" if row["called_fake"][group] is None else f"{row['called_fake'][group]:.1%}" for group in FACE_SIZE_GROUPS)])
    if not rows:
        return None
    return format_table(["dataset", "truth", "faces", "width px", "quartiles px", *(f"called fake: {g}" for g in FACE_SIZE_GROUPS)], rows)


def write_outputs(report: Report, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "predictions.csv"]
    (out / "metrics.json").write_text(json.dumps(report.to_json(), indent=1))
    write_predictions(report, out / "predictions.csv")
    curves = {name: (r.predictions.labels, r.predictions.probs) for name, r in report.datasets.items()}
    if any(len(set(labels.tolist())) == 2 for labels, _ in curves.values()):
        plots.roc(curves, out / "roc.png")
        written.append(out / "roc.png")
    band = report.model.uncertain_band
    for name, r in report.datasets.items():
        plots.reliability({f"{name} (ECE {r.metrics['ece']:.3f})": (r.predictions.labels, r.predictions.probs)},
                          f"{report.model.name} on {name}: {r.selection}, {r.metrics['n']} photos", out / f"reliability_{name}.png",
                          band=band.edges if band is not None else None)
        written.append(out / f"reliability_{name}.png")
        plots.confusion_matrix(r.metrics["confusion"], f"{name} ({r.metrics['n']} images, t={report.threshold:.2f})", out / f"confusion_{name}.png")
        written.append(out / f"confusion_{name}.png")
        if _wrong_faces(r, report.model.preprocess, report.threshold, out / f"wrong_{name}.png"):
            written.append(out / f"wrong_{name}.png")
    return written


PREDICTION_COLUMNS = ["dataset", "file", "truth", "fake_probability", "answer", "face_found", "face_px", "error"]


def write_predictions(report: Report, path: Path) -> None:
    """One row per photo evaluated, unreadable ones included: its probability (its most-fake face's), the
    answer that probability gets at the threshold and band evaluated (fake, real, or uncertain inside the band)
    and, for an export, that face's width in the photo's pixels (blank without a face)."""
    with path.open("w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(PREDICTION_COLUMNS)
        for name, result in report.datasets.items():
            p = result.predictions
            widths = p.face_px if p.face_px is not None else np.full(len(p.samples), np.nan)
            for sample, probability, found, width in zip(p.samples, p.probs, p.face_found, widths):
                rows.writerow([name, sample.path, _truth(sample.label), float(probability),
                               answer(float(probability), report.threshold, report.model.uncertain_band), bool(found),
                               f"{width:.1f}" if np.isfinite(width) else "", ""])
            for sample, error in p.unreadable:
                rows.writerow([name, sample.path, _truth(sample.label), "", "", False, "", error])


def _truth(label: int) -> str:
    return "fake" if label else "real"


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
    if model.uncertain_band is not None:
        band = model.uncertain_band
        print(f"uncertain band [{band.low:.3f}, {band.high:.3f}) from {model.band_source}: 'uncertain' is the share of photos in it, "
              "'conf acc' the accuracy of the answers outside it ('acc': every answer forced to real or fake); "
              "'answered fake': the share of each class whose verdict is fake")
    elif model.kind == "onnx" and model.band_source != "the model card":
        print(f"no uncertain band ({model.band_source} off): every answer real or fake")
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
    sizes = face_size_table(report)
    if sizes:
        print("\ncalled fake at the threshold by the deciding face's width in the photo's pixels (split at its quartiles):")
        print(sizes)
    if report.tta_sets:
        print("\ntest-time rotation sets (ROC-AUC / accuracy):")
        print(tta_table(report))
    for note in report.notes:
        print(f"note: {note}")
