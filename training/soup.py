"""One network whose weights are a weighted mean of several exports of the same network (a "model soup",
Wortsman et al. 2022; with a fine-tune and the network it came from, WiSE-FT). Unlike an ensemble it costs
what one member costs: the graph is the first member's, only its weights change.

    python -m training.soup --member exports/default.onnx --member runs/members/lite0-224.onnx --weight 0.7 \
        --weight 0.3 --name soup --out runs/soupx [--data ../shared/data/tpdne128 ...]

The members must be the same architecture at the same input size, exported the same way, and fine-tuned
from one another (a mean of unrelated networks is noise). Exports hold each batch norm folded into its
convolution, so the mean is of the folded weights: of the functions the members compute in eval mode.
Without --data the raw soup is written (for training.compare); with --data it is measured, calibrated and
given its uncertain band on the first member's split, as training.export does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from service.config import parse_angles
from service.contract import ModelCard, ModelLoadError
from service.onnx_model import read_card
from training.calibrate import CalibrationError, calibrate_model
from training.card import ExportError
from training.cli import start_command
from training.data import DatasetError, Split
from training.ensemble import check_splits, combined_card, combined_parser, member_records, normalised, save_combined
from training.scoring import default_split_file


def check_members(cards: Sequence[ModelCard]) -> None:
    first = cards[0]
    for card in cards[1:]:
        if card.architecture != first.architecture or card.preprocess != first.preprocess or card.class_names != first.class_names:
            raise ExportError(f"{card.name} {card.version} is not the same network with the same preprocessing as {first.name}: "
                              "a soup needs one architecture, one input size, one contract")


def mixed_model(paths: Sequence[Path], weights: Sequence[float]) -> onnx.ModelProto:
    """The first member's graph with every float initializer replaced by the weighted mean of the members'."""
    models = [onnx.load(str(p)) for p in paths]
    base = models[0]
    if any([n.op_type for n in m.graph.node] != [n.op_type for n in base.graph.node] for m in models[1:]):
        raise ExportError("the members' graphs differ: export them with the same training.export")
    others = [{t.name: t for t in m.graph.initializer} for m in models[1:]]
    for tensor in base.graph.initializer:
        arrays = [numpy_helper.to_array(tensor)] + [numpy_helper.to_array(_named(o, tensor, paths)) for o in others]
        if not np.issubdtype(arrays[0].dtype, np.floating):
            if any(not np.array_equal(a, arrays[0]) for a in arrays[1:]):
                raise ExportError(f"{tensor.name}: the members' non-float constants differ")
            continue
        mean = sum(w * a.astype(np.float64) for w, a in zip(weights, arrays)).astype(arrays[0].dtype)
        tensor.CopyFrom(numpy_helper.from_array(mean, tensor.name))
    del base.metadata_props[:]
    return base


def _named(tensors: dict[str, onnx.TensorProto], like: onnx.TensorProto, paths: Sequence[Path]) -> onnx.TensorProto:
    other = tensors.get(like.name)
    if other is None or list(other.dims) != list(like.dims):
        raise ExportError(f"{like.name}: not in every member with the same shape ({', '.join(map(str, paths))})")
    return other


def soup_card(name: str, paths: Sequence[Path], cards: Sequence[ModelCard], weights: Sequence[float], digest: str, command: str) -> ModelCard:
    members = [record | {"weight": weight} for record, weight in zip(member_records(paths, cards), weights)]
    return combined_card(name, cards[0].architecture, cards, digest, command, soup=members)


def build(paths: Sequence[Path], weights: Sequence[float] | None, name: str, out: Path, command: str) -> tuple[Path, Split]:
    cards = [read_card(path) for path in paths]
    check_members(cards)
    weights = normalised(weights, len(paths))
    split = Split.load(default_split_file(paths[0]))
    check_splits(paths, split)
    target = save_combined(mixed_model(paths, weights), out / f"{name}.onnx",
                           lambda digest: soup_card(name, paths, cards, weights, digest, command), split)
    return target, split


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = combined_parser("soup", __doc__, "the split's dataset folders (repeat): measure and calibrate the soup", data_required=False)
    p.add_argument("--weight", type=float, action="append", help="each member's weight, in --member order (default: equal); normalised to sum to 1")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.soup", argv)
    args = parse_args(argv)
    try:
        if len(args.member) < 2:
            raise ExportError("a soup needs two or more --member models")
        path, split = build(args.member, args.weight, args.name, args.out, command)
        if args.data:
            card = calibrate_model(path, args.data, split, parse_angles(args.tta), args.figures or Path("runs") / f"soup-{args.name}" / "calibration",
                                   command=command)
            print(f"{path}: threshold {card.threshold:.4f}")
        else:
            print(path)
    except (ExportError, CalibrationError, DatasetError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
