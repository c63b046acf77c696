"""Stage a training run for a GPU machine lent for a few minutes, whose calls each carry a small tree
(64 MiB here, the tracked files included): the raw photos of a split's training part, and a share of its
validation part for choosing the epoch there, packed into numbered folders that git ignores.

    python -m training.lent_gpu --data ../shared/data/tpdne128 --data ../shared/data/rff ... \\
        --split exports/default.split.json --keep utk-real:train=0.5 --keep rff:val=0.5 --out .gpd

writes .gpd1, .gpd2, ...: each holds data/<set>/<label>/... and the last also split.json, the split file
with each training and validation part cut to the photos carried and the test parts untouched, so that the
run's recipe rebuilds from ../shared/data with that split. Carry one folder a call and copy it out of the
tree at once (`cp -r .gpd1/data/. /tmp/data/`): a carried folder is gone at the next call, /tmp is not
while the machine is held. Raw photos, not crops: a 224 px PNG crop is larger than its JPEG.
docs/choosing-the-default.md (round 23) has the rest: wheels, the crop cache there, what comes back.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from training.data import DatasetError, Sample, Split, scan_dataset


def parse_keep(items: list[str]) -> dict[tuple[str, str], float]:
    """`["utk-real:train=0.5"]` -> `{("utk-real", "train"): 0.5}`."""
    keep = {}
    for item in items:
        where, _, share = item.partition("=")
        name, _, part = where.partition(":")
        try:
            keep[(name, part)] = float(share)
        except ValueError:
            raise DatasetError(f"--keep takes SET:PART=SHARE, got {item!r}") from None
        if part not in ("train", "val") or not 0 < keep[(name, part)] <= 1:
            raise DatasetError(f"--keep {item!r}: PART is train or val and SHARE in (0, 1]")
    return keep


def carried_split(split: Split, keep: dict[tuple[str, str], float], seed: int) -> Split:
    """The split with each (set, part) named in `keep` cut to a seeded share of its photos."""
    datasets = {}
    for name, parts in split.datasets.items():
        datasets[name] = dict(parts)
        for part in ("train", "val"):
            share = keep.get((name, part), 1.0)
            if share < 1:
                keys = sorted(parts[part])
                datasets[name][part] = sorted(random.Random(f"{seed}-{name}-{part}").sample(keys, round(len(keys) * share)))
    return split.model_copy(update={"datasets": datasets})


def pack(samples: list[Sample], budgets: list[int]) -> list[list[Sample]]:
    """The photos in as few folders as the byte budgets allow, the largest first into the emptiest."""
    folders: list[list[Sample]] = [[] for _ in budgets]
    room = list(budgets)
    for sample in sorted(samples, key=lambda s: -s.path.stat().st_size):
        size = sample.path.stat().st_size
        best = max(range(len(room)), key=lambda i: room[i])
        if size > room[best]:
            raise DatasetError(f"the photos do not fit in {len(budgets)} folders of these budgets; add --calls or --keep less")
        folders[best].append(sample)
        room[best] -= size
    return folders


CHECKPOINT_KEEPS = ("model", "model_name", "preprocess", "origin", "epoch", "history", "best_auc", "threshold", "threshold_rule",
                    "datasets", "seed", "command", "recipe")


def slim_checkpoint(source: Path, destination: Path) -> None:
    """A training checkpoint without the optimizer's state and the raw weights beside the moving average:
    what export and --pretrained read, small enough to come back from a lent machine."""
    import torch

    state = torch.load(source, map_location="cpu", weights_only=False)
    torch.save({key: state.get(key) for key in CHECKPOINT_KEEPS}, destination)


CALL_LIMIT_MB = 64 * 2**20 / 1e6  # what one device call carries, the working tree included
CALL_MARGIN_MB = 1.0
SMALLEST_USEFUL_BUDGET_MB = 10.0


def carried_tree_mb() -> float:
    """What a device call carries besides the staged photos: the files git tracks, and the untracked ones
    it does not ignore."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise DatasetError("run it in the git checkout whose tree the calls carry, or pass --budget-mb")
    root = Path(top.stdout.strip())
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True, text=True).stdout
    return sum(path.stat().st_size for path in (root / name for name in listed.split("\0") if name) if path.is_file()) / 1e6


def default_budget_mb() -> float:
    """The room a call leaves for photos once it carries the tree; a clear error where that is too little to use."""
    tree = carried_tree_mb()
    budget = CALL_LIMIT_MB - tree - CALL_MARGIN_MB
    if budget < SMALLEST_USEFUL_BUDGET_MB:
        raise DatasetError(
            f"each call carries the tree ({tree:.1f} MB of {CALL_LIMIT_MB:.1f}), which leaves {budget:.1f} MB for photos: "
            "for the data calls take the exports out of the index (`git rm -q --cached exports/*.onnx` and `/exports/*.onnx` "
            "in .git/info/exclude; `git reset -q -- exports/` and the exclude line removed restore them), or pass --budget-mb")
    return budget


def ignored_by_git(folder: Path) -> bool:
    result = subprocess.run(["git", "check-ignore", "-q", f"{folder}/"], capture_output=True)
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.lent_gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset folder (repeat)")
    p.add_argument("--split", type=Path, required=True, help="the split the run will use, e.g. exports/default.split.json")
    p.add_argument("--keep", action="append", default=[], metavar="SET:PART=SHARE", help="carry only this seeded share of a set's train or val part")
    p.add_argument("--calls", type=int, default=3, help="folders, one a call")
    p.add_argument("--budget-mb", type=float, help="photos per folder, in MB (default: the call's limit less the tree it "
                   "carries, git's tracked and untracked files, measured now)")
    p.add_argument("--last-reserve-mb", type=float, default=20.0, help="room left in the last folder for wheels and scripts")
    p.add_argument("--out", default=".gpd", help="folder prefix: <out>1, <out>2, ...")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        split = carried_split(Split.load(args.split), parse_keep(args.keep), args.seed)
        samples = [s for folder in args.data for s in scan_dataset(folder)]
        chosen = split.select(samples, "train") + split.select(samples, "val")
        budget_mb = args.budget_mb if args.budget_mb is not None else default_budget_mb()
        budgets = [int(budget_mb * 1e6)] * args.calls
        budgets[-1] -= int(args.last_reserve_mb * 1e6)
        folders = pack(chosen, budgets)
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    targets = [Path(f"{args.out}{i + 1}") for i in range(args.calls)]
    if not all(ignored_by_git(t) for t in targets):
        print(f"error: git does not ignore {args.out}N; add `/{args.out}*/` to .git/info/exclude so no photo enters the repo", file=sys.stderr)
        return 2
    for target, folder in zip(targets, folders):
        shutil.rmtree(target, ignore_errors=True)
        for sample in tqdm(folder, desc=str(target), unit="img", mininterval=2):
            destination = target / "data" / sample.dataset / sample.key
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sample.path, destination)
    split.save(targets[-1] / "split.json")
    print(f"at most {budget_mb:.1f} MB of photos a folder, beside the tree each call carries")
    for target, folder in zip(targets, folders):
        print(f"{target}: {len(folder)} photos, {sum(s.path.stat().st_size for s in folder) / 1e6:.1f} MB")
    print(f"{targets[-1]}/split.json: the run's --split")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
