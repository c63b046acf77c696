"""Train and export the orientation network: which quarter turn a face crop shows (service/orientation.py).

    python -m training.orientation --data ../shared/data/tpdne128 --data ../shared/data/rff \
        --data ../shared/data/utk-real --data ../shared/data/lfw-real --data ../shared/data/sdfd-sd21

The training split's face crops, each turned by a random quarter and mirrored half the time, are the
labelled data: no labelling is needed (after Gidaris et al. 2018). Four small convolution blocks on
64 px crops, eight one-cycle epochs: about four minutes on 2 cores. Writes exports/orientation.onnx
with its card (and the card as .json beside it), after printing how often the validation split's
crops have their turn named, per set and turn.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from service.config import REPO_ROOT
from service.orientation import ORIENTATION_KEY, TURNS, OrientationCard, OrientationModel
from service.preprocess import PreprocessSpec
from training.cache import CropCache
from training.cli import start_command
from training.data import DatasetError, Split, scan_dataset

BATCH = 128
SPEC = PreprocessSpec(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), margin=0.3, resize_filter="box", edges="fit")


def network() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(96, len(TURNS)))


def face_crops(cache: CropCache, samples: list, workers: int, desc: str) -> tuple[torch.Tensor, np.ndarray]:
    """The crops where a face was found, normalised as SPEC says (NCHW), and each one's dataset."""
    crops = cache.crop_set(samples, SPEC, workers=workers, desc=desc)
    keep = crops.face_found
    x = torch.from_numpy(crops.crops[keep]).permute(0, 3, 1, 2).float().div(255.0)
    return (x - 0.5) / 0.5, np.array(crops.datasets)[keep]


def turned(batch: torch.Tensor, quarters: torch.Tensor) -> torch.Tensor:
    """Each crop turned its number of quarter turns counter-clockwise (as Image.Transpose.ROTATE_90 turns)."""
    return torch.stack([torch.rot90(crop, int(k), dims=(1, 2)) for crop, k in zip(batch, quarters)])


def train(net: nn.Module, crops: torch.Tensor, epochs: int) -> None:
    optimiser = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    steps = epochs * (len(crops) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=steps)
    bar = tqdm(total=steps, desc="orientation", unit="batch", mininterval=2)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(crops))
        for start in range(0, len(crops) - BATCH + 1, BATCH):  # whole batches: a last handful skews batch norm's statistics
            batch = crops[order[start:start + BATCH]]
            quarters = torch.randint(0, len(TURNS), (len(batch),))
            batch = torch.where(torch.rand(len(batch), 1, 1, 1) < 0.5, batch, batch.flip(3))  # a face's turn is not its side
            loss = nn.functional.cross_entropy(net(turned(batch, quarters)), quarters)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    net.eval()


def named_right(probabilities: Callable[[torch.Tensor], np.ndarray], crops: torch.Tensor, datasets: np.ndarray, sure: float) -> dict[str, dict[str, float]]:
    """Per dataset: the share of crops whose turn is named right, per turn; and of upright crops, the share the service would search
    other turns for (upright with less than `sure`) and the share named turned with `sure` or more."""
    probs = {k: probabilities(torch.rot90(crops, k, dims=(2, 3))) for k in range(len(TURNS))}
    table = {}
    for name in dict.fromkeys(datasets):
        rows = datasets == name
        table[name] = {f"{TURNS[k]}": float((probs[k][rows].argmax(1) == k).mean()) for k in probs}
        upright = probs[0][rows]
        table[name]["upright below sure"] = float((upright[:, 0] < sure).mean())
        table[name]["upright named turned, sure"] = float(((upright.argmax(1) != 0) & (upright.max(1) >= sure)).mean())
        table[name]["crops"] = int(rows.sum())
    return table


def torch_probabilities(net: nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    def probabilities(crops: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(crops), 1).numpy()

    return probabilities


class Softmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def export(net: nn.Module, card: OrientationCard, target: Path) -> None:
    """`target` and its card .json, after checking ONNX Runtime answers as PyTorch does."""
    wrapped = Softmax(net).eval()
    example = torch.zeros(2, 3, SPEC.input_size, SPEC.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / target.name
        torch.onnx.export(wrapped, (example,), str(staged), dynamo=True, opset_version=18, input_names=["input"], output_names=["turn_probability"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False)
        proto = onnx.load(str(staged))
        entry = proto.metadata_props.add()
        entry.key, entry.value = ORIENTATION_KEY, card.model_dump_json()
        proto.doc_string = f"facecheck {card.name} {card.version}: {card.output}"
        onnx.save(proto, str(staged))
        onnx.checker.check_model(str(staged), full_check=True)
        check = torch.randn(5, 3, SPEC.input_size, SPEC.input_size, generator=torch.Generator().manual_seed(0))
        loaded = OrientationModel(staged)
        (answer,) = loaded.session.run(None, {loaded.input_name: check.numpy()})
        with torch.no_grad():
            worst = float(np.abs(answer - wrapped(check).numpy()).max())
        if worst > 1e-4:
            raise SystemExit(f"ONNX and PyTorch differ by {worst:.2e}; nothing written")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(target)
    target.with_suffix(".json").write_text(card.model_dump_json(indent=2) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.orientation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="a dataset folder (real/, fake/); repeat")
    parser.add_argument("--split", type=Path, default=REPO_ROOT / "exports" / "default.split.json",
                        help="the split to train on and check against (default: the default model's, so its validation faces stay unseen)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "exports" / "orientation.onnx")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--sure", type=float, default=0.9, help="the probability of a turn at which the service turns a photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes cropping what the crop cache lacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.orientation", argv)
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        samples = [sample for root in args.data for sample in scan_dataset(root)]
        split = Split.load(args.split)
    except (DatasetError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cache = CropCache()
    train_crops, _ = face_crops(cache, split.select(samples, "train"), args.workers, "train crops")
    val_crops, val_sets = face_crops(cache, split.select(samples, "val"), args.workers, "val crops")
    if len(train_crops) < BATCH:
        print(f"error: {len(train_crops)} training faces; at least {BATCH} are needed", file=sys.stderr)
        return 2
    net = network()
    train(net, train_crops, args.epochs)
    metrics = named_right(torch_probabilities(net), val_crops, val_sets, args.sure)
    print_table(metrics)
    now = dt.datetime.now(dt.timezone.utc)
    card = OrientationCard(version=now.strftime("%Y.%m.%d-%H%M"), created=now.isoformat(timespec="seconds"), preprocess=SPEC, sure=args.sure,
                           training={"datasets": [root.name for root in args.data], "split": shown_path(args.split), "faces": len(train_crops),
                                     "epochs": args.epochs, "seed": args.seed,
                                     "parameters": sum(p.numel() for p in net.parameters())},
                           metrics={"validation, turn named right": metrics}, command=command)
    export(net, card, args.out)
    print(f"wrote {args.out}")
    return 0


def shown_path(path: Path) -> str:
    """`path` relative to the repository where it lies inside it, as a card records it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def print_table(metrics: dict[str, dict[str, float]]) -> None:
    print(f"{'validation crops':<12} {'faces':>6} " + " ".join(f"{turn:>6}" for turn in TURNS) + "  upright: below sure, named turned (sure)")
    for name, row in metrics.items():
        print(f"{name:<12} {row['crops']:>6} " + " ".join(f"{row[str(turn)]:>6.1%}" for turn in TURNS)
              + f"  {row['upright below sure']:.2%}, {row['upright named turned, sure']:.2%}")


if __name__ == "__main__":
    sys.exit(main())
