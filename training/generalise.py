"""Does a model hold on photos unlike its training data? Two tables, each with a PNG, optionally written into the README.

    python -m training.generalise robustness --model exports/default.onnx --data ../shared/data/tpdne128 ...
    python -m training.generalise loso --data ../shared/data/tpdne128 ... [training.train options]

robustness: the test split of each dataset re-processed by chains a photo meets on its way to a user
(scaled 0.5x-4x, resized to 256 and 512 px, JPEG 60-95, blurred; training/chains.py), each scored through
the service's own pipeline at the model's threshold: ROC-AUC, real photos called fake, fakes caught. A
model with an uncertain band adds the verdicts the service gives with it: real photos answered fake, fakes
answered fake, photos answered uncertain (with --from-card, where the card recorded them with that band).

loso: leave-one-source-out (training/loso.py). For each source, the recipe is trained without it at a
small budget, and the held-out photos are scored: how many fakes are caught, how many reals called fake.
Each fold keeps its photos' probabilities (scores.npz), so `loso-combine --run A --run B` gives the table
an ensemble of the two recipes would get: the mean logit of their folds, its threshold chosen as a fold's
(`--weight 3 --weight 1` for a weighted mean, as training.ensemble --weight builds), or with `--lift W`
the first run's logit raised, never lowered, by the others where each is surer than of 95% of every
real set's validation photos.

--readme README.md replaces the text between `<!-- generalise:NAME -->` and `<!-- /generalise:NAME -->`
(NAME: robustness or loso) with the new table and a link to its PNG.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import Sequence

from service.calibration import UncertainBand
from service.contract import ModelLoadError
from service.onnx_model import read_card
from training import loso, robustness
from training import train as train_command
from training.cache import CropCache
from training.card import ExportError, robustness_results
from training.chains import ROBUSTNESS_CHAINS, ChainError, chain_names, parse_chain
from training.cli import start_command
from training.data import DatasetError, Sample, Split, make_split
from training.evaluate import choose_samples, parse_angles, scan_folders
from training.readme import SectionError, check_section, write_section
from training.scoring import EvaluationError, inspect_model

# The LOSO training budget: the full recipe's data, sampling and augmentation, from ImageNet weights, at
# 128 px for 2 x 3,072 samples, no frozen epoch and no weight averaging (too few steps for either).
LOSO_BUDGET = ["--input-size", "128", "--epochs", "2", "--epoch-size", "3072", "--freeze-epochs", "0", "--patience", "2", "--ema", "0"]


class GeneraliseError(ValueError):
    """A request that cannot be carried out, with a one-line reason."""


def _link(readme: Path, png: Path) -> str:
    try:
        return png.resolve().relative_to(readme.resolve().parent).as_posix()
    except ValueError:
        return png.resolve().as_posix()


# --- robustness ---------------------------------------------------------------------------------------


def limited(samples: list[Sample], limit: int | None, seed: int = 0) -> list[Sample]:
    """At most `limit` photos per dataset, each label keeping its share; the same every run."""
    if not limit:
        return samples
    chosen = []
    for name in dict.fromkeys(s.dataset for s in samples):
        inside = [s for s in samples if s.dataset == name]
        for label in (0, 1):
            group = sorted((s for s in inside if s.label == label), key=lambda s: s.key)
            random.Random(f"{seed}-{name}-{label}").shuffle(group)
            chosen += group[:round(limit * len(group) / len(inside))]
    return chosen


def run_robustness(args: argparse.Namespace) -> int:
    check_section(args.readme, "robustness")
    datasets = scan_folders(args.data)
    sections, summaries = [], {}
    for model in args.model:
        info = inspect_model(model)
        if info.kind != "onnx":
            raise GeneraliseError(f"{model}: robustness scores whole photos through the service pipeline, so it takes an exported .onnx model")
        notes: list[str] = []
        chosen, split_file = choose_samples(datasets, "test", args.split_file, model, notes)
        chains = [robustness.UNPROCESSED, *(parse_chain(c).name for c in chains_to_report(args, model))]
        angles = info.angles if args.tta is None else args.tta
        if args.from_card:
            results = card_results(model, chains, angles, info.uncertain_band, notes)
        else:
            samples = limited([s for selected, _ in chosen.values() for s in selected], args.limit)
            results = robustness.measure(model, samples, angles, chains, info.threshold, band=info.uncertain_band)
        png = (args.figures or args.out) / f"robustness-{model.stem}.png"
        robustness.plot(results, f"{model.name}: test split re-processed, threshold {info.threshold:.2f}", png)
        worst = robustness.worst(results)
        summaries[str(model)] = {"threshold": info.threshold, "split_file": str(split_file), "angles": list(angles), "limit": args.limit,
                                 "results": results, "worst": worst}
        print(f"\n{model} ({info.name}), threshold {info.threshold:.3f}, test split of {split_file}, angles {list(angles)}"
              + (f", at most {args.limit} photos per set" if args.limit else ""))
        print(robustness.table(results))
        print(robustness.worst_line(worst))
        verdicts = robustness.has_verdicts(results)
        if verdicts:
            print(f"\nThe verdicts, with the uncertain band [{info.uncertain_band.low:.3f}, {info.uncertain_band.high:.3f}):")
            print(robustness.table(results, verdicts=True))
        for note in notes:
            print(f"note: {note}")
        if args.readme:
            sections.append(f"**`{model}`** (threshold {info.threshold:.3f}; cells: ROC-AUC, real photos called fake, fakes caught)\n\n"
                            f"{robustness.markdown(results)}\n\n{robustness.worst_line(worst)}\n\n![robustness of {model.name}]({_link(args.readme, png)})"
                            + (verdict_section(info.uncertain_band, results) if verdicts else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.json").write_text(json.dumps(summaries, indent=1))
    if args.readme:
        write_section(args.readme, "robustness", f"`{args.command}`\n\n" + "\n\n".join(sections))
        print(f"wrote the robustness tables into {args.readme}")
    print(f"wrote robustness.json and {len(args.model)} PNG(s) to {args.out}")
    return 0


def verdict_section(band: UncertainBand, results: dict[str, dict[str, dict]]) -> str:
    return (f"\n\nThe same photos as the service answers them, with the uncertain band [{band.low:.3f}, {band.high:.3f}): a photo is "
            f"answered fake only at or above {band.high:.3f}, and uncertain inside the band (cells: the share of real photos answered "
            f"fake, of fakes answered fake, of all photos answered uncertain)\n\n{robustness.markdown(results, verdicts=True)}")


def chains_to_report(args: argparse.Namespace, model: Path) -> list[str]:
    """--chains where given; else, from a card, the chains it recorded (a card older than a chain lacks it); else every chain."""
    if args.chains is not None:
        return args.chains
    if args.from_card:
        return list(read_card(model).metrics.get("robustness", {}).get("chains", {})) or list(ROBUSTNESS_CHAINS)
    return list(ROBUSTNESS_CHAINS)


def card_results(model: Path, chains: Sequence[str], angles: Sequence[float], band: UncertainBand | None,
                 notes: list[str]) -> dict[str, dict[str, dict]]:
    """The figures the model's card recorded at export (training.card), where it measured these chains with
    these rotations; the verdicts only where it measured them with the band now in force."""
    metrics = read_card(model).metrics
    recorded = robustness_results(metrics) if metrics.get("test") else {}
    missing = [chain for chain in chains if chain not in recorded]
    if missing or metrics.get("robustness", {}).get("angles") != list(angles):
        raise GeneraliseError(f"{model}'s card has no figures for {', '.join(missing) or 'these rotations'}: measure them (leave out --from-card)")
    results = {chain: recorded[chain] for chain in chains}
    measured_with, in_force = metrics.get("robustness", {}).get("band"), list(band.edges) if band is not None else None
    if measured_with == in_force:
        return results
    if in_force is not None:
        notes.append(f"the card records no verdicts with the band in force {in_force} (it measured them with {measured_with}): "
                     f"leave out --from-card to measure them")
    return {chain: {name: {k: v for k, v in m.items() if k not in robustness.VERDICTS} for name, m in per_set.items()}
            for chain, per_set in results.items()}


# --- leave-one-source-out -----------------------------------------------------------------------------


def run_loso(args: argparse.Namespace, train_options: list[str]) -> int:
    check_section(args.readme, "loso")
    data = [option for folder in args.data for option in ("--data", str(folder))]
    train_argv = ["--model", args.model_name, *data, "--out", str(args.out), *LOSO_BUDGET, *train_options]
    template = train_command.parse_args(train_argv)
    samples = [s for _, found in scan_folders(args.data).values() for s in found]
    template.set_weights = train_command.parse_set_weights(template.set_weight, {s.dataset for s in samples})
    spec = train_command.preprocess_spec(template)
    split = Split.load(args.split_file) if args.split_file else make_split(samples, seed=template.seed)
    split, added = split.extended(samples, template.seed)
    if added:
        logging.getLogger("training.loso").info("%s: not in %s, split afresh (seed %d)", ", ".join(added), args.split_file, template.seed)
    cache = CropCache()
    parts = {name: cache.crop_set(split.select(samples, name), spec, template.workers, f"crops ({name})") for name in ("train", "val", "test")}
    rows = []
    for source in loso.sources(parts["train"]):
        if args.only and source.name not in args.only:
            continue
        folder = args.out / source.name
        row = loso.done_row(folder)
        if row is None:
            fold = argparse.Namespace(**vars(template))
            fold.out, fold.spec = folder, spec
            fold.command = f"{train_command.recorded_command(train_argv)} (fold without {source.name})"
            folder.mkdir(parents=True, exist_ok=True)
            logging.getLogger("training.loso").info("fold: %s held out", source.name)
            row = loso.run_fold(source, parts, fold, args.tta)
        rows.append(row)
        print(loso.table([row]).splitlines()[-1])
    png = (args.figures or args.out) / "loso.png"
    loso.plot(rows, f"leave one source out: {args.model_name}, {spec.input_size} px, {template.epochs} x {template.epoch_size} samples", png)
    (args.out / "loso.json").write_text(json.dumps({"budget": LOSO_BUDGET + train_options, "rows": rows}, indent=1))
    print("\n" + loso.table(rows))
    if args.readme:
        write_section(args.readme, "loso", f"`{args.command}`\n\n{loso.markdown(rows)}\n\n![leave one source out]({_link(args.readme, png)})")
        print(f"wrote the leave-one-source-out table into {args.readme}")
    return 0


def run_loso_combine(args: argparse.Namespace) -> int:
    """The leave-one-source-out table of an ensemble: the mean logit of the folds of several `loso` runs, or the first lifted by the others."""
    if args.lift is not None and args.weight:
        raise GeneraliseError("--lift and --weight are two ways to combine: give one")
    rows = loso.combined_rows(args.run, args.weight, args.lift)
    args.out.mkdir(parents=True, exist_ok=True)
    png = (args.figures or args.out) / "loso.png"
    if args.lift is not None:
        title = f"{args.run[0].name} lifted by {' and '.join(run.name for run in args.run[1:])} (weight {args.lift:g})"
    else:
        weights = f" (weights {', '.join(f'{w:g}' for w in args.weight)})" if args.weight else ""
        title = f"the mean logit of {' and '.join(run.name for run in args.run)}{weights}"
    loso.plot(rows, "leave one source out: " + title, png)
    record = {"runs": [str(run) for run in args.run], "weights": args.weight, "lift": args.lift, "rows": rows}
    (args.out / "loso.json").write_text(json.dumps(record, indent=1))
    print(loso.table(rows))
    return 0


# --- command line -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m training.generalise", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="table", required=True)
    r = commands.add_parser("robustness", help="the test split re-processed by each chain, through the service pipeline")
    r.add_argument("--model", type=Path, action="append", required=True, help="an exported .onnx model; repeat to compare several")
    r.add_argument("--chains", type=chain_names,
                   help=f"chains separated by ';' (default: {';'.join(ROBUSTNESS_CHAINS)}; with --from-card, those the card recorded)")
    r.add_argument("--limit", type=int, help="at most this many test photos per dataset (seeded; default: all)")
    r.add_argument("--out", type=Path, default=Path("runs/generalise"), help="where robustness.json and the PNGs go")
    r.add_argument("--from-card", action="store_true", help="the figures the model's card recorded at export, measured on its whole test split, instead of measuring again")
    lo = commands.add_parser("loso", help="leave one source out, with a small training budget per fold; other options go to training.train")
    lo.add_argument("--model", dest="model_name", default="efficientnet_lite0", help="the architecture (training.models)")
    lo.add_argument("--only", action="append", help="run just this fold (e.g. sdfd-sd21-fake); repeatable")
    lo.add_argument("--out", type=Path, default=Path("runs/loso"), help="a folder per fold, loso.json and loso.png")
    co = commands.add_parser("loso-combine", help="the mean logit of several loso runs' folds, as an ensemble of their recipes would answer")
    co.add_argument("--run", type=Path, action="append", required=True, help="a loso run's --out folder (repeat; same data and split)")
    co.add_argument("--weight", type=float, action="append",
                    help="each run's weight on its folds' logits, in --run order (default: equal), as training.ensemble --weight")
    co.add_argument("--lift", type=float, help="instead of a mean: the first run's logit raised by this weight per unit of each other run's logit "
                    "above its floor (the largest of its real sets' 95th percentiles on validation), never lowered")
    co.add_argument("--out", type=Path, required=True, help="where loso.json and loso.png go")
    co.add_argument("--figures", type=Path, help="where the PNG goes (default: --out)")
    for sub, default_tta in ((r, None), (lo, "0")):
        sub.add_argument("--data", type=Path, action="append", required=True, help="dataset folder with real/ and/or fake/; repeat")
        sub.add_argument("--split-file", type=Path, help="the split (robustness default: the model's own; loso default: made with --seed; for loso, a set the file lacks is split afresh with --seed)")
        sub.add_argument("--tta", type=parse_angles, default=parse_angles(default_tta) if default_tta else None,
                         help="test-time rotations, e.g. -15,0,15 (robustness default: those the service uses with the model; loso default: 0)")
        sub.add_argument("--readme", type=Path, help="write the table into this README's generalise section")
        sub.add_argument("--figures", type=Path, help="where the PNGs go (default: --out), e.g. docs/generalisation for the README's links")
    args, rest = p.parse_known_args(argv)
    if args.table in ("robustness", "loso-combine") and rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.generalise", argv)
    args, rest = parse_args(argv)
    args.command = command
    try:
        if args.table == "robustness":
            return run_robustness(args)
        if args.table == "loso-combine":
            return run_loso_combine(args)
        return run_loso(args, rest)
    except (GeneraliseError, SectionError, ChainError, EvaluationError, DatasetError, ModelLoadError, ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
