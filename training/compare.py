"""Choose between exports, and ways of combining them, on the validation split alone.

    python -m training.compare --model runs/members/lite0-160.onnx --model runs/members/lite0-224.onnx \
        --data ../shared/data/tpdne128 --data ../shared/data/rff ... [--chain 'x0.5>x2']

Each model scores the validation photos through the service pipeline (its raw probabilities, with the
rotations the service uses). Each model alone and each combination (the larger probability, the mean
logit) is put at the threshold that maximises balanced accuracy on validation, every set's real and fake
photos weighted alike, and gets one row: each two-class set's ROC-AUC, its real photos called fake and its fakes caught,
each real-only set's real photos called fake, each fake-only set's fakes caught. With --chain, the
validation reals are also re-processed by each chain and their share called fake, at the same threshold,
is a column: how a candidate holds on photos prepared unlike its training data, without the test split.
With --chain-fakes the validation fakes go through each chain too, and the column adds the share caught:
a preparation can hide a fake (a black-and-white copy, a heavy re-save) as well as accuse a real person.
With --matched, every other model gets a second row at the threshold where it calls as many validation
reals fake as the first model does at its own (the mean over the real sets): a candidate whose own
threshold lands elsewhere is then compared on what it catches and on the chains at equal false positives.
With --cautious, every row's own threshold follows the export's rule instead (training.metrics.CAUTIOUS_RULE:
the highest within a standard error of the best balanced accuracy), as the candidate would be served.
The test split is never read.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from service.calibration import logit
from service.config import parse_angles
from training.chains import ChainError, parse_chain
from training.cache import DEFAULT_CACHE
from training.cli import start_command
from training.data import DatasetError, Sample, Split, scan_dataset
from training.metrics import balanced_accuracy_threshold, cautious_threshold
from training.scoring import inspect_model, predict_onnx

Combine = Callable[[np.ndarray], np.ndarray]  # (models, photos) probabilities -> (photos,)


COMBINATIONS: dict[str, Combine] = {
    "the larger probability": lambda probs: probs.max(axis=0),
    "mean logit": lambda probs: 1 / (1 + np.exp(-logit(probs).mean(axis=0))),
}


def candidates(names: Sequence[str]) -> list[tuple[str, list[int], Combine]]:
    """Each model alone, then each combination of every subset of two or more."""
    rows = [(name, [i], COMBINATIONS["the larger probability"]) for i, name in enumerate(names)]
    for size in range(2, len(names) + 1):
        for subset in itertools.combinations(range(len(names)), size):
            for label, combine in COMBINATIONS.items():
                rows.append((f"{label} of {' + '.join(names[i] for i in subset)}", list(subset), combine))
    return rows


def set_columns(labels: np.ndarray, datasets: np.ndarray) -> list[tuple[str, str]]:
    """(set, kind): 'auc' for a two-class set, 'real' for real-only, 'fake' for fake-only."""
    columns = []
    for name in dict.fromkeys(datasets):
        present = set(labels[datasets == name].tolist())
        columns.append((name, "auc" if present == {0, 1} else "real" if present == {0} else "fake"))
    return columns


def row_cells(labels: np.ndarray, datasets: np.ndarray, probs: np.ndarray, threshold: float, columns: list[tuple[str, str]]) -> list[str]:
    cells = []
    for name, kind in columns:
        here = datasets == name
        called_fake = probs[here] >= threshold
        if kind == "auc":
            real = labels[here] == 0
            cells.append(f"{roc_auc_score(labels[here], probs[here]):.3f}, {called_fake[real].mean():.1%}, {called_fake[~real].mean():.1%}")
        else:
            cells.append(f"{called_fake.mean():.1%}")
    return cells


def chained_cell(datasets: np.ndarray, labels: np.ndarray, called_fake: np.ndarray) -> str:
    """Per set, its reals called fake; where fakes went through the chain too, '/ N% caught' for them."""
    parts = []
    for name in dict.fromkeys(datasets):
        real, fake = (datasets == name) & (labels == 0), (datasets == name) & (labels == 1)
        shares = ([f"{called_fake[real].mean():.1%}"] if real.any() else []) + ([f"{called_fake[fake].mean():.1%} caught"] if fake.any() else [])
        parts.append(f"{name} {' / '.join(shares)}")
    return ", ".join(parts)


def mean_real_called_fake(labels: np.ndarray, datasets: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    """The share of real photos called fake, averaged over the sets that have real photos."""
    real_sets = [name for name in dict.fromkeys(datasets) if ((datasets == name) & (labels == 0)).any()]
    return float(np.mean([(probs[(datasets == name) & (labels == 0)] >= threshold).mean() for name in real_sets]))


def matched_threshold(labels: np.ndarray, datasets: np.ndarray, probs: np.ndarray, target: float, near: float) -> float:
    """The threshold whose mean share of reals called fake is nearest `target`; among equals, the one nearest `near`."""
    candidates = np.unique(np.r_[probs, near])
    return float(min(candidates, key=lambda t: (abs(mean_real_called_fake(labels, datasets, probs, t) - target), abs(t - near))))


def table(names: list[str], labels: np.ndarray, datasets: np.ndarray, probs: np.ndarray,
          chain_scores: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], matched: bool = False, cautious: bool = False) -> str:
    """probs: (models, photos); chain_scores: chain -> (datasets, labels, (models, photos) probabilities) of the re-processed photos."""
    columns = set_columns(labels, datasets)
    heads = [f"{n} ROC-AUC, reals called fake, fakes caught" if k == "auc" else f"{n} {'called fake' if k == 'real' else 'caught'}" for n, k in columns]
    heads += [f"reals called fake{' / fakes caught' if (chain_labels == 1).any() else ''} after {chain}"
              for chain, (_, chain_labels, _) in chain_scores.items()]
    lines = ["| on validation | threshold | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    choose = cautious_threshold if cautious else balanced_accuracy_threshold
    rows = [(label, members, combine, choose(labels, combine(probs[members]), list(datasets)))
            for label, members, combine in candidates(names)]
    if matched:
        reference = rows[0][3]
        target = mean_real_called_fake(labels, datasets, probs[0], reference)
        rows += [(f"{names[i]} at {names[0]}'s share of reals called fake", [i], COMBINATIONS["the larger probability"],
                  matched_threshold(labels, datasets, probs[i], target, reference)) for i in range(1, len(names))]
    for label, members, combine, threshold in rows:
        cells = row_cells(labels, datasets, combine(probs[members]), threshold, columns)
        cells += [chained_cell(sets, chain_labels, combine(chain_probs[members]) >= threshold) for sets, chain_labels, chain_probs in chain_scores.values()]
        lines.append(f"| {label} | {threshold:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores(model: Path, samples: list[Sample], angles: Sequence[float], chain: str | None = None) -> tuple[list[str], np.ndarray]:
    """Each scored photo's path and raw probability, kept on disk by model, photos, rotations and chain: a
    comparison that adds one candidate scores only that one."""
    key = hashlib.sha256(model.read_bytes() + repr((sorted(str(s.path) for s in samples), list(angles), chain)).encode()).hexdigest()
    path = DEFAULT_CACHE / "compare" / f"{key[:24]}.npz"
    if path.exists():
        stored = np.load(path)
        return [str(p) for p in stored["paths"]], stored["probs"]
    predictions = predict_onnx(model, samples, angles, desc=f"{model.stem} {chain or ''}", chain=parse_chain(chain) if chain else None,
                               calibrated=False)
    paths = [str(s.path) for s in predictions.samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, paths=np.array(paths), probs=predictions.probs)
    return paths, predictions.probs


def aligned(models: list[Path], samples: list[Sample], angles: Sequence[float] | None, chain: str | None = None) -> tuple[list[Sample], np.ndarray]:
    """The photos every model could read, and a (models, photos) array of their probabilities; `angles` None:
    each model at the rotations the service uses with it."""
    by_model = [dict(zip(*scores(m, samples, inspect_model(m).angles if angles is None else angles, chain))) for m in models]
    kept = [s for s in samples if all(str(s.path) in seen for seen in by_model)]
    return kept, np.array([[seen[str(s.path)] for s in kept] for seen in by_model])


def chained(models: list[Path], kept: list[Sample], angles: Sequence[float] | None, chain: str, with_fakes: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reals (and with_fakes, the fakes) re-processed by `chain`: datasets, labels, (models, photos) probabilities.
    Reals and fakes are scored apart, so that a comparison of reals alone reuses the scores it cached."""
    wanted = (0, 1) if with_fakes else (0,)
    groups = [aligned(models, photos, angles, chain) for photos in ([s for s in kept if s.label == label] for label in wanted) if photos]
    photos = [s for group, _ in groups for s in group]
    probs = np.concatenate([p for _, p in groups], axis=1)
    return np.array([s.dataset for s in photos]), np.array([s.label for s in photos]), probs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", required=True, help="an export; repeat to compare and combine")
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset folder; repeat")
    p.add_argument("--split", type=Path, help="split file (default: the first model's <name>.split.json)")
    p.add_argument("--chain", action="append", default=[], help="re-process the validation reals by this chain too, e.g. 'x0.5>x2'")
    p.add_argument("--chain-fakes", action="store_true", help="re-process the validation fakes by each chain too, and give the share caught")
    p.add_argument("--tta", help="rotations for every model (default: each at those the service uses with it: FACECHECK_TTA_ANGLES, else its card's)")
    p.add_argument("--cautious", action="store_true", help="each row's own threshold by the export's rule (the highest within a standard error "
                   "of the best balanced accuracy) instead of the best balanced accuracy")
    p.add_argument("--matched", action="store_true", help="also put every other model at the first one's share of validation reals called fake")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, _ = start_command("training.compare", argv)
    args = parse_args(argv)
    try:
        chains = {text: parse_chain(text) for text in args.chain}
        split = Split.load(args.split or args.model[0].with_suffix(".split.json"))
        val = split.select([s for folder in args.data for s in scan_dataset(folder)], "val")
    except (ChainError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    angles = None if args.tta is None else parse_angles(args.tta)
    kept, probs = aligned(args.model, val, angles)
    labels, datasets = np.array([s.label for s in kept]), np.array([s.dataset for s in kept])
    print(table([m.stem for m in args.model], labels, datasets, probs, {text: chained(args.model, kept, angles, text, args.chain_fakes) for text in chains},
                args.matched, args.cautious))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
