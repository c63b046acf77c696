"""Calibrate an export's probabilities on its validation split, and choose the band answered "uncertain".

    python -m training.calibrate --model exports/default.onnx \
        --data ../shared/data/tpdne128 --data ../shared/data/rff --data ../shared/data/utk-real \
        [--split-file exports/default.split.json] [--figures docs/calibration --readme README.md]

1. The validation and test splits are scored through the service's own pipeline with the card's calibration
   off: the network's probability for each crop (every face, every rotation).
2. Two calibrations are fitted on validation, each applied per crop before the mean over rotations and the
   most-fake face, as the service applies it: temperature scaling (one T, p -> sigmoid(logit(p) / T),
   minimising the log loss of each image's probability) and isotonic regression (on each image's
   probability). Isotonic is kept only where its cross-validated ECE on validation is clearly lower
   (ISOTONIC_GAIN); otherwise temperature.
3. The threshold, through the service's pipeline with that calibration (training/card.py):
   training.metrics.CAUTIOUS_RULE, the highest whose balanced accuracy on the calibrated validation
   probabilities is within a standard error of the best.
4. The uncertain band: the narrowest [low, high) around the threshold outside which, on validation, the fake
   answers (p >= high) and the real answers (p < low) are each at least --precision precise, with real
   and fake photos weighted half and half and the sets of a class alike.
   The model is then measured as an export is, through the service's pipeline: the test metrics per set
   and the re-processing chains, each with the verdicts the band gives (so that
   `training.generalise robustness --from-card` can show them without measuring again).
5. Per test set: ECE before and after; the ECE that a perfectly calibrated model would show on the same
   photos by chance (95th percentile, training.metrics.chance_ece); the share of photos in the band; and
   the accuracy of the confident answers next to that of every answer forced to real or fake. A
   reliability diagram (PNG) per set.

The card, inside the .onnx and in <name>.json beside it, records the calibration, the band, the rules that
chose both, and these numbers (metrics.calibration). With --readme the table and the diagrams' links go
into the README between `<!-- generalise:calibration -->` and `<!-- /generalise:calibration -->`.

With --validation-only, steps 1-4 run and their effect on each validation set is printed (the share
answered uncertain, and the reals and fakes answered each way); nothing is written and the test split is
not read: how candidates are compared by the band they would get, before one is chosen.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from service.argv import join_option_values
from service.calibration import Calibration, UncertainBand
from service.config import REPO_ROOT, get_settings, parse_angles, recorded_angles
from service.contract import ModelCard, ModelLoadError
from service.onnx_model import read_card
from training import plots
from training.card import ExportError, attach_card, measure_test, service_threshold_rule, validation_threshold, write_card_json
from training.chains import ROBUSTNESS_CHAINS, Chain, ChainError, chain_names, parse_chain
from training.cli import start_command
from training.data import DatasetError, Sample, Split, scan_dataset
from training.metrics import chance_ece, expected_calibration_error, uncertain_metrics
from training.quantize import remeasured_record
from training.readme import SectionError, check_section, write_section
from training.report import format_table
from training.scoring import Predictions, default_split_file, predict_onnx

log = logging.getLogger("training.calibrate")
PRECISION = 0.95
# isotonic regression has a step per knot and fits its own sample too well: it must beat temperature
# scaling's cross-validated ECE by this much (ECE points) to be kept
ISOTONIC_GAIN = 0.01
FOLDS = 5
TEMPERATURES = (0.05, 20.0)


class CalibrationError(ValueError):
    """Calibration that cannot be done, with a one-line reason."""


# --- fitting ------------------------------------------------------------------------------------------


def image_probs(predictions: Predictions, calibration: Calibration | None = None, images: np.ndarray | None = None) -> np.ndarray:
    """Each image's probability as the service's pipeline gives it with `calibration` applied to every crop:
    the mean over rotations, then the most-fake face. `images`: only these (ascending indices into the samples)."""
    units, owners = predictions.units, predictions.owners
    if units is None or owners is None:
        raise CalibrationError("calibration needs an exported .onnx model's per-crop probabilities")
    if images is not None:
        keep = np.isin(owners, images)
        units, owners = units[keep], np.searchsorted(images, owners[keep])
    count = len(predictions.samples) if images is None else len(images)
    faces = (units if calibration is None else calibration.apply(units)).mean(axis=1)
    out = np.full(count, -np.inf)
    np.maximum.at(out, owners, faces)
    return out


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-12, 1.0 - 1e-12)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1.0 - p)))


def fit_temperature(predictions: Predictions, images: np.ndarray) -> Calibration:
    labels = predictions.labels[images]

    def loss(log_t: float) -> float:
        return log_loss(labels, image_probs(predictions, Calibration(method="temperature", temperature=float(np.exp(log_t))), images))

    best = minimize_scalar(loss, bounds=tuple(np.log(TEMPERATURES)), method="bounded", options={"xatol": 1e-4})
    return Calibration(method="temperature", temperature=float(np.exp(best.x)))


def fit_isotonic(predictions: Predictions, images: np.ndarray) -> Calibration | None:
    """Isotonic regression of the label on each image's uncalibrated probability; None where it has no two knots."""
    regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    regression.fit(image_probs(predictions, None, images), predictions.labels[images])
    x, y = regression.X_thresholds_, regression.y_thresholds_
    if len(x) < 2:
        return None
    return Calibration(method="isotonic", x=[float(v) for v in x], y=[float(v) for v in y])


def cross_validated_ece(predictions: Predictions, fit, folds: int = FOLDS, seed: int = 0) -> float | None:
    """ECE of the validation images, each calibrated by `fit` on the other folds (stratified by set and label)."""
    labels = predictions.labels
    groups = np.array([f"{s.dataset}/{s.label}" for s in predictions.samples])
    smallest = min(np.unique(groups, return_counts=True)[1])
    folds = min(folds, int(smallest))
    if folds < 2:
        return None
    calibrated = np.zeros(len(labels))
    for train, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, groups):
        calibration = fit(predictions, train)
        if calibration is None:
            return None
        calibrated[held_out] = image_probs(predictions, calibration, held_out)
    return expected_calibration_error(labels, calibrated)


def choose_calibration(val: Predictions) -> tuple[Calibration, dict[str, Any]]:
    """Temperature scaling, or isotonic regression where its cross-validated ECE is ISOTONIC_GAIN lower; fitted on all of `val`."""
    everything = np.arange(len(val.samples))
    scores = {"temperature": cross_validated_ece(val, fit_temperature), "isotonic": cross_validated_ece(val, fit_isotonic)}
    isotonic = scores["isotonic"] is not None and scores["temperature"] is not None and scores["isotonic"] <= scores["temperature"] - ISOTONIC_GAIN
    chosen = fit_isotonic(val, everything) if isotonic else fit_temperature(val, everything)
    shown = {name: "n/a" if ece is None else f"{ece:.4f}" for name, ece in scores.items()}
    rule = (f"fitted on the validation split, per crop before the mean over rotations and the most-fake face: temperature scaling "
            f"(one T minimising the log loss of each image's probability), or isotonic regression where its {FOLDS}-fold cross-validated "
            f"ECE is at least {ISOTONIC_GAIN} lower; cross-validated ECE here: temperature {shown['temperature']}, isotonic {shown['isotonic']}")
    return chosen.model_copy(update={"rule": rule}), {"cross_validated_ece": scores}


# --- the uncertain band -------------------------------------------------------------------------------


def balanced_weights(labels: np.ndarray, datasets: Sequence[str]) -> np.ndarray:
    """Real and fake photos weighted half and half, the sets of a class alike, the photos of a set alike."""
    labels, names = np.asarray(labels, dtype=int), np.asarray(datasets)
    weights = np.zeros(len(labels))
    for label in (0, 1):
        sets = np.unique(names[labels == label])
        for name in sets:
            group = (labels == label) & (names == name)
            weights[group] = 0.5 / len(sets) / group.sum()
    return weights


def choose_band(labels: np.ndarray, probs: np.ndarray, datasets: Sequence[str], threshold: float,
                precision: float = PRECISION) -> tuple[UncertainBand, dict[str, Any]]:
    """The narrowest [low, high) with low <= threshold <= high such that the images at or above high are fake,
    and those below low real, with at least `precision` (balanced_weights). An edge that no cut reaches
    goes to the end of the range: 0 or 1."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    weights = balanced_weights(labels, datasets)
    fake, real = weights * (labels == 1), weights * (labels == 0)
    high, fake_precision = 1.0, None
    for cut in np.unique(np.concatenate([[threshold], probs[probs >= threshold]])):
        above = probs >= cut
        if weights[above].sum() > 0 and fake[above].sum() / weights[above].sum() >= precision:
            high, fake_precision = float(cut), float(fake[above].sum() / weights[above].sum())
            break
    low, real_precision = 0.0, None
    for cut in np.unique(np.concatenate([[threshold], probs[probs <= threshold]]))[::-1]:
        below = probs < cut
        if weights[below].sum() > 0 and real[below].sum() / weights[below].sum() >= precision:
            low, real_precision = float(cut), float(real[below].sum() / weights[below].sum())
            break
    rule = (f"the narrowest band around the threshold outside which, on the validation split, the fake answers (p >= high) and the real "
            f"answers (p < low) are each at least {precision:.0%} precise, real and fake photos weighted half and half and the sets of a "
            f"class alike; an edge no cut reaches is 0 or 1")
    return UncertainBand(low=low, high=high, rule=rule), {"precision_target": precision, "fake_precision_above": fake_precision,
                                                          "real_precision_below": real_precision}


# --- the whole step -----------------------------------------------------------------------------------


@dataclass
class ValidationFit:
    """What an export gets from its validation split: the calibration, threshold and band, and the scores they came from."""
    raw: Predictions
    calibration: Calibration
    fitting: dict[str, Any]
    threshold: float
    band: UncertainBand
    band_fit: dict[str, Any]

    @property
    def probs(self) -> np.ndarray:
        return image_probs(self.raw, self.calibration)


@contextlib.contextmanager
def staged_copy(model: Path, card: ModelCard) -> Iterator[Path]:
    """A temporary copy of `model` carrying `card`, which the service's pipeline reads as it would the export."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / model.name
        shutil.copyfile(model, staged)
        attach_card(staged, card)
        yield staged


def fit_on_validation(model: Path, card: ModelCard, samples: Sequence[Sample], split: Split, angles: Sequence[float],
                      precision: float = PRECISION) -> ValidationFit:
    """Steps 1-4 on the validation split alone: the calibration, the threshold the service's pipeline gives with it,
    and the band. The model file is left as it is."""
    val = split.select(samples, "val")
    if not val:
        raise CalibrationError("the split has no validation photos in these folders; calibration needs them")
    raw = predict_onnx(model, val, angles, device="cpu", desc="validation, uncalibrated", calibrated=False)
    calibration, fitting = choose_calibration(raw)
    log.info("calibration: %s", calibration.model_dump(exclude={"rule"}))
    with staged_copy(model, card.model_copy(update={"calibration": calibration, "uncertain_band": None})) as staged:
        threshold = validation_threshold(staged, split, samples, angles)
    band, band_fit = choose_band(raw.labels, image_probs(raw, calibration), raw.datasets, threshold, precision)
    return ValidationFit(raw, calibration, fitting, threshold, band, band_fit)


def calibrate_model(model: Path, folders: Sequence[Path], split: Split, angles: Sequence[float], figures: Path | None = None,
                    precision: float = PRECISION, command: str = "") -> ModelCard:
    """Fit the calibration and the band of `model` (an .onnx export) on its validation split, re-measure it,
    and write the new card into the model and beside it. Returns the card; `figures` gets a reliability
    diagram per test set."""
    model = Path(model)
    card = read_card(model)
    samples = [s for folder in folders for s in scan_dataset(folder)]
    val, test = split.select(samples, "val"), split.select(samples, "test")
    if not val or not test:
        raise CalibrationError(f"the split has {len(val)} validation and {len(test)} test photos in these folders; calibration needs both")
    fit = fit_on_validation(model, card, samples, split, angles, precision)
    calibration, threshold, band = fit.calibration, fit.threshold, fit.band
    raw_test = predict_onnx(model, test, angles, device="cpu", desc="test, uncalibrated", calibrated=False)
    chains = chains_to_measure(card)
    with staged_copy(model, card.model_copy(update={"calibration": calibration, "uncertain_band": None})) as staged:
        val_probs, test_probs = fit.probs, image_probs(raw_test, calibration)
        metrics = measure_test(staged, split, samples, angles, threshold, chains, band)
        metrics["calibration"] = {
            "command": command, "angles": list(angles),
            "validation": {"n": len(val_probs), "ece_before": expected_calibration_error(fit.raw.labels, image_probs(fit.raw)),
                           "ece_after": expected_calibration_error(fit.raw.labels, val_probs), **fit.fitting, **fit.band_fit,
                           "uncertain_share": float(np.mean(band.contains(val_probs)))},
            "test": per_set(raw_test, test_probs, threshold, band),
        }
        card = card.model_copy(update={
            "calibration": calibration, "uncertain_band": band, "threshold": threshold, "metrics": metrics,
            "threshold_rule": service_threshold_rule(angles) + ", on the calibrated probabilities",
            "quantization": remeasured_record(model, card.quantization, metrics) if card.quantization else {}})
        card.training["tta_angles"] = list(angles)
        attach_card(staged, card)
        shutil.move(staged, model)
    write_card_json(model, card)
    if figures is not None:
        reliability_figures(raw_test, test_probs, band, figures)
    return card


def chains_to_measure(card: ModelCard) -> list[str]:
    """Every robustness chain there is, then any other the card was measured on: calibrating again never
    drops a chain from the card, and brings an older card up to the chains added since."""
    recorded = card.metrics.get("robustness", {}).get("chains", {})
    return [*ROBUSTNESS_CHAINS, *(chain for chain in recorded if chain not in ROBUSTNESS_CHAINS)]


def per_set(raw: Predictions, calibrated: np.ndarray, threshold: float, band: UncertainBand) -> dict[str, dict[str, Any]]:
    """ECE before and after, what chance alone gives, and what the band does, for each set of `raw`'s photos."""
    names, before = np.array(raw.datasets), image_probs(raw)
    rows = {}
    for name in dict.fromkeys(raw.datasets):
        inside = names == name
        labels = raw.labels[inside]
        rows[name] = {"n": int(inside.sum()), "ece_before": expected_calibration_error(labels, before[inside]),
                      "ece_after": expected_calibration_error(labels, calibrated[inside]), "ece_by_chance": chance_ece(calibrated[inside]),
                      **uncertain_metrics(labels, calibrated[inside], threshold, band)}
    return rows


def reliability_figures(raw: Predictions, calibrated: np.ndarray, band: UncertainBand, folder: Path) -> list[Path]:
    names, before = np.array(raw.datasets), image_probs(raw)
    written = []
    for name in dict.fromkeys(raw.datasets):
        inside = names == name
        labels = raw.labels[inside]
        curves = {f"{when} (ECE {expected_calibration_error(labels, probs[inside]):.3f})": (labels, probs[inside])
                  for when, probs in (("uncalibrated", before), ("calibrated", calibrated))}
        path = folder / f"reliability_{name}.png"
        plots.reliability(curves, f"{name}: test split, {int(inside.sum())} photos", path, band=band.edges)
        written.append(path)
    return written


# --- reporting ----------------------------------------------------------------------------------------

HEADER = ["test set", "n", "ECE before", "ECE after", "ECE by chance", "ECE re-processed: median, worst", "uncertain", "confident",
          "accuracy of the confident", "accuracy of all (forced)"]


def reprocessed_ece(card: ModelCard, name: str) -> str:
    """The set's calibrated ECE over the card's robustness chains: the median and the worst, naming its chain."""
    chains = {chain: sets[name]["ece"] for chain, sets in card.metrics.get("robustness", {}).get("chains", {}).items()
              if sets.get(name, {}).get("ece") is not None}
    if not chains:
        return "–"
    worst = max(chains, key=chains.__getitem__)
    return f"{float(np.median(list(chains.values()))):.3f}, {chains[worst]:.3f} ({worst})"


def _rows(card: ModelCard) -> list[list[str]]:
    def share(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    return [[name, str(m["n"]), f"{m['ece_before']:.3f}", f"{m['ece_after']:.3f}", f"{m['ece_by_chance']:.3f}" if "ece_by_chance" in m else "–",
             reprocessed_ece(card, name),
             f"{share(m['uncertain_share'])} ({m['uncertain']})",
             share(m["confident_share"]), share(m["confident_accuracy"]), share(m["accuracy"])]
            for name, m in card.metrics["calibration"]["test"].items()]


VALIDATION_HEADER = ["validation set", "n", "ROC-AUC", "ECE after", "uncertain", "reals answered fake", "fakes answered fake",
                     "fakes answered real"]


def validation_report(fit: ValidationFit, rechained: dict[str, Predictions] | None = None) -> str:
    """The calibration, threshold and band an export would get, and what they do to each validation set: as
    it is, then re-processed by each chain of `rechained` (its photos scored uncalibrated through that chain)."""
    text = (f"on validation: {describe(fit.calibration)}; threshold {fit.threshold:.4f}; uncertain band [{fit.band.low:.4f}, {fit.band.high:.4f})\n"
            + _validation_table(fit.raw, fit.probs, fit))
    for chain, raw in (rechained or {}).items():
        text += f"\n\nthe validation split re-processed by {chain}, at the same calibration, threshold and band:\n"
        text += _validation_table(raw, image_probs(raw, fit.calibration), fit)
    return text


def _validation_table(raw: Predictions, probs: np.ndarray, fit: ValidationFit) -> str:
    names, rows = np.array(raw.datasets), []
    for name, m in per_set(raw, probs, fit.threshold, fit.band).items():
        labels = raw.labels[names == name]
        auc = roc_auc_score(labels, probs[names == name]) if len(set(labels.tolist())) == 2 else None
        rows.append([name, str(m["n"]), "–" if auc is None else f"{auc:.3f}", f"{m['ece_after']:.3f}", f"{m['uncertain_share']:.1%}",
                     *("–" if m[key] is None else f"{m[key]:.1%}" for key in ("real_answered_fake", "fake_answered_fake", "fake_answered_real"))])
    return format_table(VALIDATION_HEADER, rows)


def describe(calibration: Calibration) -> str:
    return f"temperature T = {calibration.temperature:.3f}" if calibration.method == "temperature" else f"isotonic, {len(calibration.x)} knots"


def summary(card: ModelCard) -> str:
    band = card.uncertain_band
    return (f"{card.name} {card.version}: {describe(card.calibration)}; threshold {card.threshold:.4f}; uncertain band [{band.low:.4f}, {band.high:.4f})"
            f" ({card.metrics['calibration']['validation']['uncertain_share']:.1%} of validation photos)")


def table(card: ModelCard) -> str:
    return format_table(HEADER, _rows(card))


def markdown(card: ModelCard, figures: Path | None, readme: Path) -> str:
    lines = [f"| {' | '.join(HEADER)} |", "|---|" + "---:|" * (len(HEADER) - 1)]
    lines += [f"| {' | '.join(row)} |" for row in _rows(card)]
    text = f"`{card.metrics['calibration']['command']}`\n\n{summary(card)}.\n\n" + "\n".join(lines)
    if figures is not None:
        links = [f"![{name}]({Path(os.path.relpath(figures / f'reliability_{name}.png', readme.resolve().parent)).as_posix()})"
                 for name in card.metrics["calibration"]["test"]]
        text += "\n\n" + " ".join(links)
    return text


# --- command line -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="an export of python -m training.export (exports/<name>.onnx); rewritten in place")
    p.add_argument("--data", type=Path, action="append", required=True, help="the dataset folders of the model's split (repeat)")
    p.add_argument("--split-file", type=Path, help="the model's split (default: <name>.split.json beside the model)")
    p.add_argument("--tta", help="rotations, e.g. -15,0,15 (default: the card's, else FACECHECK_TTA_ANGLES, else -15,0,15)")
    p.add_argument("--precision", type=float, default=PRECISION, help=f"the precision each confident side must reach on validation (default {PRECISION})")
    p.add_argument("--figures", type=Path, help="where the reliability diagrams go (default: runs/calibrate-<name>)")
    p.add_argument("--readme", type=Path, help="write the table into this README's <!-- generalise:calibration --> section")
    p.add_argument("--validation-only", action="store_true", help="fit on validation and print what the calibration and band would do "
                   "to each validation set; the model, its card and the test split are left alone (for choosing between candidates)")
    p.add_argument("--chains", type=chain_names, default=[], help="with --validation-only: also the validation split re-processed by each "
                   "of these chains (training/chains.py, ';'-separated, e.g. 'warm15;x0.5'), at the same calibration, threshold and band: what "
                   "they do to its ECE and its verdicts (training.compare --chain compares candidates' rankings and thresholds)")
    return p.parse_args(join_option_values(argv, ("--tta",)))


def card_angles(card: ModelCard) -> tuple[float, ...]:
    """The rotations a card was fitted at, an empty list meaning upright only; else the settings' default."""
    recorded = recorded_angles(card)
    return get_settings().angles_for() if recorded is None else recorded


def preview(args: argparse.Namespace, card: ModelCard, split: Split, angles: Sequence[float], chains: Sequence[Chain]) -> str:
    """--validation-only: the fit on validation, and what it does to the validation split as it is and re-processed by each chain."""
    samples = [s for folder in args.data for s in scan_dataset(folder)]
    fit = fit_on_validation(args.model, card, samples, split, angles, args.precision)
    rechained = {chain.name: predict_onnx(args.model, split.select(samples, "val"), angles, device="cpu", desc=f"validation, {chain.name}",
                                          calibrated=False, chain=chain) for chain in chains}
    return validation_report(fit, rechained)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.calibrate", argv)
    args = parse_args(argv)
    try:
        if not 0.5 < args.precision < 1.0:
            raise CalibrationError(f"--precision must lie between 0.5 and 1, got {args.precision}")
        check_section(args.readme, "calibration")
        card = read_card(args.model)
        split_file = args.split_file or default_split_file(args.model)
        if not split_file.is_file():
            raise CalibrationError(f"split file not found: {split_file} (give --split-file)")
        try:
            angles = parse_angles(args.tta) if args.tta is not None else card_angles(card)
        except ValueError:
            raise CalibrationError(f"--tta takes comma-separated degrees such as -15,0,15, got {args.tta!r}") from None
        chains = [parse_chain(text) for text in args.chains]
        if args.validation_only:
            if args.readme or args.figures:
                raise CalibrationError("--validation-only writes nothing: leave out --readme and --figures")
            print(preview(args, card, Split.load(split_file), angles, chains))
            return 0
        if chains:
            raise CalibrationError("--chains re-processes the validation split for --validation-only; an export's card records its own chains")
        figures = args.figures or REPO_ROOT / "runs" / f"calibrate-{args.model.stem}"
        card = calibrate_model(args.model, args.data, Split.load(split_file), angles, figures, args.precision, command)
    except (CalibrationError, ChainError, ExportError, DatasetError, ModelLoadError, SectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(card))
    print(table(card))
    print(f"reliability diagrams in {figures}; card written into {args.model} and {args.model.with_suffix('.json')}")
    if args.readme:
        write_section(args.readme, "calibration", markdown(card, figures, args.readme))
        print(f"wrote the calibration table into {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
