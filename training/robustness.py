"""How a model holds when its test photos are re-processed (training/chains.py): one service-pipeline
pass per chain, scored per dataset at the model's own threshold."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from service.calibration import UncertainBand
from training import plots
from training.chains import parse_chain
from training.data import Sample
from training.metrics import binary_metrics, uncertain_metrics
from training.report import format_table
from training.scoring import predict_onnx

UNPROCESSED = "none"
KEPT = ("n", "roc_auc", "false_positive_rate", "recall", "accuracy", "ece")
VERDICTS = ("uncertain_share", "real_answered_fake", "fake_answered_fake")


def summary(labels: np.ndarray, probs: np.ndarray, threshold: float, band: UncertainBand | None = None) -> dict[str, Any]:
    """What the robustness table shows of one set: recall (fakes caught) only where there are fakes; with
    the model's uncertain band, also the verdicts: the share answered uncertain, and of each class the
    share answered fake."""
    metrics = binary_metrics(labels, probs, threshold)
    kept = {key: metrics[key] for key in KEPT}
    if metrics["per_class"]["fake"]["support"] == 0:
        kept["recall"] = None
    return kept | verdicts(labels, probs, threshold, band)


def verdicts(labels: np.ndarray, probs: np.ndarray, threshold: float, band: UncertainBand | None) -> dict[str, Any]:
    """With an uncertain band, the share of photos the service answers uncertain, and of each class the share it answers fake."""
    if band is None:
        return {}
    found = uncertain_metrics(labels, probs, threshold, band)
    return {key: found[key] for key in VERDICTS}


def measure(onnx_path: Path, samples: Sequence[Sample], angles: Sequence[float], chains: Sequence[str], threshold: float,
            device: str = "cpu", band: UncertainBand | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{chain: {dataset: summary}}; the chain "none" scores the photos as they are."""
    names = list(dict.fromkeys(s.dataset for s in samples))  # in the order --data named them, as the card keeps them
    results = {}
    for text in chains:
        chain = None if text == UNPROCESSED else parse_chain(text)
        found = predict_onnx(onnx_path, samples, angles, device=device, desc=f"chain {text}", chain=chain)
        sets = np.array(found.datasets)
        results[text] = {name: summary(found.labels[sets == name], found.probs[sets == name], threshold, band)
                         for name in names if (sets == name).any()}
    return results


def _cell(metrics: dict[str, Any]) -> str:
    parts = []
    if metrics["roc_auc"] is not None:
        parts.append(f"{metrics['roc_auc']:.3f}")
    if metrics["false_positive_rate"] is not None:
        parts.append(f"{metrics['false_positive_rate']:.1%} real→fake")
    if metrics["roc_auc"] is None and metrics["recall"] is not None:
        parts.append(f"{metrics['recall']:.1%} caught")
    return ", ".join(parts)


def _verdict_cell(metrics: dict[str, Any]) -> str:
    parts = [f"{metrics[key]:.1%} {words}" for key, words in (("real_answered_fake", "real→fake"),
                                                               ("fake_answered_fake", "caught")) if metrics[key] is not None]
    return ", ".join([*parts, f"{metrics['uncertain_share']:.1%} uncertain"])


def table(results: dict[str, dict[str, dict[str, Any]]], verdicts: bool = False) -> str:
    """Chains as rows, datasets as columns: ROC-AUC where a set has both classes, the share of real photos
    called fake where it has real ones, and the share of fakes caught in a fake-only set. With `verdicts`
    (results measured with the band): the share of each class answered fake, and of all answered uncertain."""
    names, cell = list(results[UNPROCESSED]), _verdict_cell if verdicts else _cell
    rows = [[chain, *(cell(per_set[name]) if name in per_set else "–" for name in names)] for chain, per_set in results.items()]
    return format_table(["chain", *names], rows)


def has_verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> bool:
    """Whether the results were measured with the model's uncertain band (measure's `band`)."""
    return all(VERDICTS[0] in m for per_set in results.values() for m in per_set.values())


def markdown(results: dict[str, dict[str, dict[str, Any]]], verdicts: bool = False) -> str:
    """The table `table` prints; with `verdicts`, the answers with the uncertain band in place of the threshold's."""
    names, cell = list(results[UNPROCESSED]), _verdict_cell if verdicts else _cell
    lines = ["| chain | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| `{chain}` | " + " | ".join(cell(per_set[name]) if name in per_set else "–" for name in names) + " |" for chain, per_set in results.items()]
    return "\n".join(lines)


def worst(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The largest ROC-AUC drop against the unprocessed photos and the highest real-called-fake share, over
    every chain and set, with where each happened."""
    base = results[UNPROCESSED]
    drops = [(base[n]["roc_auc"] - m["roc_auc"], c, n) for c, per_set in results.items() for n, m in per_set.items() if m["roc_auc"] is not None]
    fprs = [(m["false_positive_rate"], c, n) for c, per_set in results.items() for n, m in per_set.items() if m["false_positive_rate"] is not None]
    drop, fpr = max(drops, default=(None, None, None)), max(fprs, default=(None, None, None))
    return {"auc_drop": drop[0], "auc_drop_at": f"{drop[2]}, {drop[1]}" if drop[0] is not None else None,
            "real_called_fake": fpr[0], "real_called_fake_at": f"{fpr[2]}, {fpr[1]}" if fpr[0] is not None else None}


def worst_line(worst: dict[str, Any]) -> str:
    parts = []
    if worst["auc_drop"] is not None:
        parts.append(f"largest ROC-AUC drop {worst['auc_drop']:.3f} ({worst['auc_drop_at']})")
    if worst["real_called_fake"] is not None:
        parts.append(f"most real photos called fake {worst['real_called_fake']:.1%} ({worst['real_called_fake_at']})")
    return "Worst: " + "; ".join(parts) + "."


def plot(results: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> None:
    chains, names = list(results), list(results[UNPROCESSED])
    panels = {}
    for key, label in (("roc_auc", "ROC-AUC"), ("false_positive_rate", "real photos called fake"), ("recall", "fakes caught")):
        columns = [n for n in names if results[UNPROCESSED][n][key] is not None]
        if columns:
            panels[label] = (columns, np.array([[np.nan if results[c].get(n, {}).get(key) is None else results[c][n][key] for n in columns] for c in chains]))
    plots.heatmaps(panels, chains, title, path)
