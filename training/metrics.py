"""Binary metrics for fake (1) vs real (0), from labels and fake probabilities."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from service.calibration import UncertainBand


def confusion(labels: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    """[[real called real, real called fake], [fake called real, fake called fake]]."""
    return [[int(np.sum((labels == t) & (predicted == p))) for p in (0, 1)] for t in (0, 1)]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence = np.maximum(probs, 1 - probs)
    correct = (probs >= 0.5).astype(int) == labels
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def chance_ece(probs: np.ndarray, quantile: float = 0.95, rounds: int = 1000, seed: int = 0) -> float:
    """The ECE that a perfectly calibrated model shows on these photos by chance alone. Each round draws
    every photo's label from its own probability, and this returns the `quantile` of those rounds' ECE.
    ECE is never 0 on a finite set; a measured ECE below this cannot be told from sampling noise at this
    many photos with these probabilities."""
    probs = np.asarray(probs, dtype=float)
    rng = np.random.default_rng(seed)
    draws = [expected_calibration_error((rng.random(len(probs)) < probs).astype(int), probs) for _ in range(rounds)]
    return float(np.quantile(draws, quantile))


def mean_dataset_auc(labels: np.ndarray, probs: np.ndarray, datasets: list[str]) -> tuple[float | None, dict[str, float]]:
    """Each dataset's own ROC-AUC, and their mean: pooled over several sets, one AUC also rewards
    telling the sets apart, which is not the task. A set of one class only (real photos from one
    source, fakes from one generator) is ranked against the other class of every set."""
    labels, probs, names = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float), np.asarray(datasets)
    per_set = {}
    for name in sorted(set(datasets)):
        inside = names == name
        present = set(labels[inside].tolist())
        if len(present) == 2:
            per_set[name] = float(roc_auc_score(labels[inside], probs[inside]))
        elif present and (others := (labels != labels[inside][0]) & ~inside).any():
            chosen = inside | others
            per_set[name] = float(roc_auc_score(labels[chosen], probs[chosen]))
    return (float(np.mean(list(per_set.values()))) if per_set else None), per_set


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    predicted = (probs >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion(labels, predicted)
    per_class = {}
    for name, (hit, false_pos, miss) in {"real": (tn, fn, fp), "fake": (tp, fp, fn)}.items():
        precision, recall = _safe_div(hit, hit + false_pos), _safe_div(hit, hit + miss)
        per_class[name] = {"precision": precision, "recall": recall, "f1": _safe_div(2 * precision * recall, precision + recall), "support": hit + miss}
    both = len(set(labels.tolist())) == 2
    return {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": _safe_div(tn + tp, len(labels)),
        "balanced_accuracy": (per_class["real"]["recall"] + per_class["fake"]["recall"]) / 2 if both else None,
        "precision": per_class["fake"]["precision"],
        "recall": per_class["fake"]["recall"],
        "f1": per_class["fake"]["f1"],
        "macro_f1": (per_class["real"]["f1"] + per_class["fake"]["f1"]) / 2 if both else None,
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "false_positive_rate": _safe_div(fp, fp + tn) if tn + fp else None,
        "ece": expected_calibration_error(labels, probs),
        "confusion": [[tn, fp], [fn, tp]],
        "per_class": per_class,
    }


THRESHOLD_RULE = "maximises balanced accuracy on the validation split, every dataset's real and fake photos weighted alike"
CAUTIOUS_RULE = ("the highest threshold whose balanced accuracy on the validation split, every dataset's real and fake photos weighted "
                 "alike, is within one standard error of the best: on a flat optimum, the side that calls fewer real photos fake")


def _group_recalls(labels: np.ndarray, probs: np.ndarray, datasets: list[str] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (ascending), each (dataset, label) group's recall at each, and the groups' sizes."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    names = np.zeros(len(labels)) if datasets is None else np.asarray(datasets)
    candidates = np.unique(np.concatenate([probs, [0.5]]))
    recalls, sizes = [], []
    for name in np.unique(names):
        for label in (0, 1):
            group = np.sort(probs[(names == name) & (labels == label)])
            if len(group):
                below = np.searchsorted(group, candidates, side="left") / len(group)  # share under each threshold
                recalls.append(below if label == 0 else 1.0 - below)
                sizes.append(len(group))
    return candidates, np.array(recalls), np.array(sizes)


def every_real_set_quantile(scores: np.ndarray, labels: np.ndarray, datasets: np.ndarray, quantile: float) -> float:
    """The largest of the real sets' `quantile`s: a threshold at or above it calls at most 1 - quantile of
    *each* real set fake, not only of the reals pooled, where an easy large set can hide a hard small one."""
    reals = labels == 0
    return max(float(np.quantile(scores[reals & (datasets == name)], quantile)) for name in np.unique(datasets[reals]))


def balanced_accuracy_threshold(labels: np.ndarray, probs: np.ndarray, datasets: list[str] | None = None) -> float:
    """The threshold that maximises the mean recall over (dataset, label) groups: balanced accuracy
    for one dataset. Pooled, the most numerous set would decide it; the training sampler, too, weights
    every group alike."""
    candidates, recalls, _ = _group_recalls(labels, probs, datasets)
    return float(candidates[int(np.argmax(recalls.mean(axis=0)))])


def cautious_threshold(labels: np.ndarray, probs: np.ndarray, datasets: list[str] | None = None) -> float:
    """CAUTIOUS_RULE: where balanced accuracy is flat around its best, which threshold wins is chance; among
    those it cannot tell apart (within one binomial standard error of the best), the highest, which calls
    the fewest real photos fake."""
    candidates, recalls, sizes = _group_recalls(labels, probs, datasets)
    balanced = recalls.mean(axis=0)
    best = int(np.argmax(balanced))
    at_best = recalls[:, best]
    standard_error = float(np.sqrt(np.sum(at_best * (1 - at_best) / sizes))) / len(sizes)
    return float(candidates[np.flatnonzero(balanced >= balanced[best] - standard_error - 1e-12).max()])


def uncertain_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, band: UncertainBand | None) -> dict:
    """What answering "uncertain" inside `band` does to a set of images, both sides of it: the share answered
    uncertain, and the accuracy of the confident answers alone, next to `accuracy`, every answer forced to
    real or fake at the threshold (binary_metrics). Confident accuracy is None where nothing is confident.
    `real_answered_fake` and `fake_answered_fake`: the share of each class whose verdict is "fake" (None
    where the set has none of that class); `fake_answered_real`: the share of the fakes let through, confidently.

    An image's probability is its most-fake face's; with a band that contains the threshold (every band
    training.calibrate chooses does), that probability's label is the image's verdict."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    inside = np.zeros(len(probs), dtype=bool) if band is None else np.asarray(band.contains(probs), dtype=bool)
    confident = ~inside
    called_fake = probs >= threshold
    correct = called_fake.astype(int) == labels
    answered_fake = called_fake & confident
    return {
        "uncertain_band": None if band is None else list(band.edges),
        "uncertain": int(inside.sum()),
        "uncertain_share": _safe_div(inside.sum(), len(probs)),
        "confident_share": _safe_div(confident.sum(), len(probs)),
        "confident_accuracy": _safe_div(correct[confident].sum(), confident.sum()) if confident.any() else None,
        "accuracy": _safe_div(correct.sum(), len(probs)),
        "real_answered_fake": _safe_div(answered_fake[labels == 0].sum(), (labels == 0).sum()) if (labels == 0).any() else None,
        "fake_answered_fake": _safe_div(answered_fake[labels == 1].sum(), (labels == 1).sum()) if (labels == 1).any() else None,
        "fake_answered_real": _safe_div((confident & ~called_fake)[labels == 1].sum(), (labels == 1).sum()) if (labels == 1).any() else None,
    }


FACE_SIZE_GROUPS = ("smallest quarter", "middle half", "largest quarter")


def by_face_size(labels: np.ndarray, probs: np.ndarray, face_px: np.ndarray, threshold: float, least: int = 8) -> dict:
    """Whether a face's size in the photo's pixels moves the verdict: per class, the deciding faces split at
    their width's quartiles, and the share of each group called fake at the threshold (for real photos, the
    false-positive rate; for fakes, the share caught). Photos without a face are left out, and a class with
    fewer than `least` faces gets no row."""
    labels, probs, face_px = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float), np.asarray(face_px, dtype=float)
    rows = {}
    for name, label in (("real", 0), ("fake", 1)):
        mine = (labels == label) & np.isfinite(face_px)
        if mine.sum() < least:
            continue
        width, called_fake = face_px[mine], probs[mine] >= threshold
        low, middle, high = np.quantile(width, [0.25, 0.5, 0.75])
        groups = (width <= low, (width > low) & (width < high), width >= high)
        rows[name] = {"n": int(mine.sum()), "width_quartiles_px": [float(low), float(middle), float(high)],
                      "width_range_px": [float(width.min()), float(width.max())],
                      "called_fake": {group: _safe_div(called_fake[g].sum(), g.sum()) if g.any() else None
                                      for group, g in zip(FACE_SIZE_GROUPS, groups)}}
    return rows
