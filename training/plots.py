"""PNG pictures of training and evaluation: curves, ROC, confusion matrix, the most confidently wrong faces, reliability diagrams."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def training_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (title, keys) in zip(axes, [("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy")), ("ROC-AUC", ("val_roc_auc", "val_set_auc"))]):
        for key in keys:
            ax.plot(epochs, [h.get(key) for h in history], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, path)


def roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """One ROC curve per dataset: {name: (labels, probs)}."""
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for name, (labels, probs) in curves.items():
        if len(set(labels.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate (real called fake)")
    ax.set_ylabel("true positive rate (fake caught)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def confusion_matrix(matrix: list[list[int]], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    array = np.asarray(matrix)
    ax.imshow(array, cmap="Blues")
    for (row, col), value in np.ndenumerate(array):
        ax.text(col, row, str(value), ha="center", va="center", color="black", fontsize=12)
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)


def confidently_wrong(crops: np.ndarray, labels: np.ndarray, probs: np.ndarray, names: list[str], path: Path, count: int = 16,
                      threshold: float = 0.5) -> None:
    """The faces misclassified at `threshold` (fake when p >= threshold), farthest from it first."""
    wrong = (probs >= threshold).astype(int) != labels
    order = [i for i in np.argsort(-np.abs(probs - threshold), kind="stable") if wrong[i]][:count]
    if not order:
        return
    cols = min(4, len(order))
    rows = (len(order) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(crops[i])
        truth = "fake" if labels[i] else "real"
        ax.set_title(f"{truth}, p(fake)={probs[i]:.2f}\n{names[i][-28:]}", fontsize=7)
    _save(fig, path)


def reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path, bins: int = 10,
                band: tuple[float, float] | None = None) -> None:
    """A reliability diagram: {legend: (labels, fake probabilities)}, each bin of predicted probability (equal
    width) at its mean prediction against the share of fakes in it; a calibrated model lies on the diagonal.
    Below, how many photos each bin holds. `band` shades the uncertain band."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.0, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax in (top, bottom):
        if band is not None and band[1] > band[0]:
            ax.axvspan(band[0], band[1], color="#f59e0b", alpha=0.18, lw=0, label="uncertain band" if ax is top else None)
    top.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for name, (labels, probs) in curves.items():
        labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
        which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        filled = counts > 0
        predicted = np.bincount(which, weights=probs, minlength=bins)[filled] / counts[filled]
        observed = np.bincount(which, weights=labels, minlength=bins)[filled] / counts[filled]
        line = top.plot(predicted, observed, marker="o", label=name)[0]
        bottom.step(edges, np.append(counts, counts[-1]), where="post", color=line.get_color())
    top.set_ylabel("share of fakes")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_title(title, fontsize=9)
    top.legend(loc="upper left", fontsize=7)
    top.grid(alpha=0.3)
    bottom.set_yscale("symlog", linthresh=1)
    bottom.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.set_xlabel("predicted fake probability")
    bottom.set_ylabel("photos")
    bottom.grid(alpha=0.3)
    _save(fig, path)


# colour map and range per measure: green is good, red is bad
HEATMAP_SCALES = {"ROC-AUC": ("RdYlGn", 0.5, 1.0), "real photos called fake": ("RdYlGn_r", 0.0, 0.3), "fakes caught": ("RdYlGn", 0.0, 1.0)}


def heatmaps(panels: dict[str, tuple[list[str], np.ndarray]], rows: list[str], title: str, path: Path) -> None:
    """One annotated heatmap per measure, rows (chains or folds) down, datasets across; NaN cells stay blank."""
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + sum(1.0 + 0.75 * len(c) for c, _ in panels.values()), 0.9 + 0.38 * len(rows)), squeeze=False)
    for ax, (label, (columns, values)) in zip(axes[0], panels.items()):
        cmap, low, high = HEATMAP_SCALES.get(label, ("viridis", float(np.nanmin(values)), float(np.nanmax(values))))
        ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high, aspect="auto")
        for (row, col), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(col, row, f"{value:.2f}" if label == "ROC-AUC" else f"{value:.0%}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows if ax is axes[0][0] else [""] * len(rows), fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
