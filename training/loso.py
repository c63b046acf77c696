"""Leave-one-source-out: how a training recipe judges photos from a source it never saw.

A source is one dataset's real or fake photos (tpdne128's FFHQ reals and its StyleGAN2 fakes are two).
For each source, a model is trained with the recipe on the training split of every other source, its
threshold chosen on their validation split; then every photo of the held-out source is scored:

- a fake source: the share caught at the threshold, at the stricter one that calls 5% of the validation
  reals pooled fake, and at the strictest, that calls at most 5% of each real set's validation photos
  fake; ROC-AUC of its fakes against the test reals of the sources trained on;
- a real source: the share called fake at the same three thresholds; ROC-AUC of the test fakes against it.

Each fold writes <out>/<source>/fold.json, so a re-run skips the folds already done.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from service.calibration import logit
from training import plots
from training.cache import CropSet
from training.ensemble import normalised
from training.metrics import balanced_accuracy_threshold, every_real_set_quantile
from training.predict import predict_probs
from training.report import format_table
from training.train import Trainer, finish

log = logging.getLogger("training.loso")
FALSE_POSITIVE_BUDGET = 0.05
SCORES = "scores.npz"


def lift_floor(logits: np.ndarray, labels: np.ndarray, datasets: np.ndarray) -> float:
    """Where a lifting recipe starts to speak: at most 5% of any real set's validation photos lie above it."""
    return every_real_set_quantile(logits, labels, datasets, 1 - FALSE_POSITIVE_BUDGET)


def lifted(base: np.ndarray, member: np.ndarray, floor: float, weight: float) -> np.ndarray:
    """The base logit raised by `weight` per unit of the member's logit above its floor, and never lowered."""
    return base + weight * np.maximum(0.0, member - floor)


@dataclass(frozen=True)
class Source:
    dataset: str
    label: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{'fake' if self.label else 'real'}"

    def of(self, crops: CropSet) -> np.ndarray:
        return np.array([s.dataset == self.dataset and s.label == self.label for s in crops.samples], dtype=bool)


def sources(crops: CropSet) -> list[Source]:
    """Fake sources first, then real ones, each in name order."""
    return sorted({Source(s.dataset, s.label) for s in crops.samples}, key=lambda s: (-s.label, s.dataset))


def run_fold(source: Source, parts: dict[str, CropSet], args: argparse.Namespace, angles: Sequence[float]) -> dict[str, Any]:
    """Train without `source` (args.out is the fold's folder) and score it; returns the fold's row."""
    train, val, test = (parts[name].where(~source.of(parts[name])) for name in ("train", "val", "test"))
    held_out = _concat([parts[name].where(source.of(parts[name])) for name in ("train", "val", "test")])
    if len({int(x) for x in train.labels}) < 2:
        raise ValueError(f"without {source.name} the training split has one class only")
    trainer = Trainer(args, train, val, args.spec)
    trainer.run()
    summary = finish(trainer, val)
    model = trainer.evaluated_model
    score = lambda crops: predict_probs(model, crops.crops, args.spec, angles, device=trainer.device)  # noqa: E731
    scores = FoldScores(score(val), val.labels, np.array(val.datasets), score(test), test.labels, score(held_out))
    scores.save(args.out / SCORES)
    row = {**fold_row(source, scores, summary["threshold"]), "best_epoch": summary["best_epoch"], "epochs_run": len(trainer.history)}
    (args.out / "fold.json").write_text(json.dumps(row, indent=1))
    for checkpoint in ("best.pt", "last.pt"):  # 2 x 14 MB per fold, not needed once the row is written
        (args.out / checkpoint).unlink(missing_ok=True)
    return row


@dataclass(frozen=True)
class FoldScores:
    """A fold's probabilities: validation and test photos of the sources it saw, and every held-out photo."""
    val: np.ndarray
    val_labels: np.ndarray
    val_datasets: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    held: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, **{name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> "FoldScores":
        with np.load(path) as stored:
            return cls(**{name: stored[name] for name in cls.__dataclass_fields__})


def fold_row(source: Source, scores: FoldScores, threshold: float) -> dict[str, Any]:
    """The held-out source's row: called fake at the threshold, at 5% of the validation reals pooled and at 5% of each real set,
    its ranking against the other class."""
    strict = float(np.quantile(scores.val[scores.val_labels == 0], 1 - FALSE_POSITIVE_BUDGET))
    strictest = every_real_set_quantile(scores.val, scores.val_labels, scores.val_datasets, 1 - FALSE_POSITIVE_BUDGET)
    opposite = scores.test[scores.test_labels != source.label]
    labels = np.r_[np.full(len(scores.held), source.label), np.full(len(opposite), 1 - source.label)]
    return {
        "source": source.name, "dataset": source.dataset, "kind": "fake" if source.label else "real", "n": len(scores.held),
        "threshold": threshold, "strict_threshold": strict,
        "called_fake": float(np.mean(scores.held >= threshold)), "called_fake_strict": float(np.mean(scores.held >= strict)),
        "strictest_threshold": strictest, "called_fake_strictest": float(np.mean(scores.held >= strictest)),
        "roc_auc": float(roc_auc_score(labels, np.r_[scores.held, opposite])) if len(opposite) else None,
        "seen_real_called_fake": float(np.mean(scores.test[scores.test_labels == 0] >= threshold)),
        "seen_fake_caught": float(np.mean(scores.test[scores.test_labels == 1] >= threshold)),
    }


def combined_row(folders: Sequence[Path], weights: Sequence[float] | None = None, lift: float | None = None) -> dict[str, Any]:
    """One source's row for the (weighted) mean logit of several recipes' folds, or with `lift` the first
    recipe's logit raised by the others (`lifted`), its threshold chosen on validation as a fold's is."""
    runs = [FoldScores.load(folder / SCORES) for folder in folders]
    first = runs[0]
    if any(not (np.array_equal(r.val_labels, first.val_labels) and np.array_equal(r.test_labels, first.test_labels)
                and len(r.held) == len(first.held)) for r in runs[1:]):
        raise ValueError(f"{', '.join(map(str, folders))} did not score the same photos: run them on the same data and split")
    parts = ("val", "test", "held")
    if lift is None:
        shares = normalised(weights, len(runs))
        combined = {name: np.average([logit(getattr(r, name)) for r in runs], axis=0, weights=shares) for name in parts}
    else:
        combined = {name: logit(getattr(first, name)) for name in parts}
        for run in runs[1:]:
            floor = lift_floor(logit(run.val), run.val_labels, run.val_datasets)
            combined = {name: lifted(combined[name], logit(getattr(run, name)), floor, lift) for name in parts}
    scores = FoldScores(expit(combined["val"]), first.val_labels, first.val_datasets,
                        expit(combined["test"]), first.test_labels, expit(combined["held"]))
    row = json.loads((folders[0] / "fold.json").read_text())
    source = Source(row["dataset"], int(row["kind"] == "fake"))
    threshold = balanced_accuracy_threshold(scores.val_labels, scores.val, list(scores.val_datasets))
    return {**fold_row(source, scores, threshold), "best_epoch": None, "epochs_run": None}


def combined_rows(runs: Sequence[Path], weights: Sequence[float] | None = None, lift: float | None = None) -> list[dict[str, Any]]:
    """Every source whose fold each run has scored, in the first run's order."""
    folders = sorted((f for f in runs[0].iterdir() if (f / SCORES).is_file()), key=lambda f: (-int(f.name.endswith("-fake")), f.name))
    shared = [f.name for f in folders if all((run / f.name / SCORES).is_file() for run in runs[1:])]
    if not shared:
        raise ValueError(f"no fold with {SCORES} in every one of {', '.join(map(str, runs))} (folds run before scores were kept have none)")
    return [combined_row([run / name for run in runs], weights, lift) for name in shared]


def _concat(sets: list[CropSet]) -> CropSet:
    return CropSet([s for c in sets for s in c.samples], np.concatenate([c.crops for c in sets]), np.concatenate([c.face_found for c in sets]))


def done_row(folder: Path) -> dict[str, Any] | None:
    """A fold run before, its figures read again from its scores where it kept them (so that a column added
    since fills in without training again)."""
    path = folder / "fold.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    if (folder / SCORES).is_file():
        row |= fold_row(Source(row["dataset"], int(row["kind"] == "fake")), FoldScores.load(folder / SCORES), row["threshold"])
    return row


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _auc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


HEADER = ["held out", "photos", "held out called fake", "at 5% FPR", "at 5% FPR of every real set", "ROC-AUC",
          "seen reals called fake", "seen fakes caught"]


def _cells(row: dict[str, Any]) -> list[str]:
    verb = "caught" if row["kind"] == "fake" else "called fake"
    return [row["source"], str(row["n"]), f"{_pct(row['called_fake'])} {verb}", _pct(row["called_fake_strict"]),
            _pct(row.get("called_fake_strictest")), _auc(row["roc_auc"]),
            _pct(row["seen_real_called_fake"]), _pct(row["seen_fake_caught"])]


def table(rows: list[dict[str, Any]]) -> str:
    return format_table(HEADER, [_cells(r) for r in rows])


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    return "\n".join(lines + ["| " + " | ".join(_cells(r)) + " |" for r in rows])


def _shares(row: dict[str, Any]) -> list[float]:
    """Called fake at the three thresholds; a fold run before the strictest existed has NaN there."""
    return [row["called_fake"], row["called_fake_strict"], row.get("called_fake_strictest", np.nan)]


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    fakes = [r for r in rows if r["kind"] == "fake"]
    reals = [r for r in rows if r["kind"] == "real"]
    panels = {}
    columns = ["at threshold", "at 5% FPR", "at 5% FPR of every real set"]
    if fakes:
        panels["fakes caught"] = (columns, np.array([_shares(r) for r in fakes] + [[np.nan] * 3] * len(reals), dtype=float))
    if reals:
        panels["real photos called fake"] = (columns, np.array([[np.nan] * 3] * len(fakes) + [_shares(r) for r in reals], dtype=float))
    panels["ROC-AUC"] = (["held out vs seen"], np.array([[np.nan if r["roc_auc"] is None else r["roc_auc"]] for r in fakes + reals]))
    plots.heatmaps(panels, [f"{r['source']} held out" for r in fakes + reals], title, path)
