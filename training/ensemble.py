"""Combine exported models into one: each member scores the face crop at its own size, and the answer is
the most-fake member's probability, or with --combine mean-logit the probability of the members' mean logit.
The service loads it as it loads any export.

    python -m training.ensemble --member exports/default224.onnx --member exports/general160.onnx --name default \
        --data ../shared/data/tpdne128 --data ../shared/data/rff --data ../shared/data/utk-real \
        --data ../shared/data/lfw-real --data ../shared/data/sdfd-sd21

The ensemble takes crops at its largest member's input size; a smaller member gets them resized inside the
graph (ONNX Resize: cubic, antialiased, as PIL's bicubic downscale). Members must agree on every other part
of the preprocessing contract (mean, std, margin, crop mode, class order). The split is the first member's
(<name>.split.json beside it); every member must have been trained on its training part only. The new
card is measured and calibrated as training.export does: threshold on validation, the test split and its
re-processing chains through the service pipeline, then calibration and the uncertain band
(training/calibrate.py) on the raw maximum. Without --data the raw ensemble is written, for training.compare.

With --combine mean-logit, `--weight` (one per member) weighs each member's logit: an ensemble given as one
member and a network beside it at --weight 3 --weight 1 answers as a four-network mean would if the
first is itself a three-network mean.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
from pathlib import Path
from typing import Callable, Sequence

import onnx
from onnx import TensorProto, compose, helper

from service.calibration import EPSILON
from service.config import get_settings, parse_angles
from service.contract import ModelCard, ModelLoadError
from service.onnx_model import read_card
from training.calibrate import CalibrationError, calibrate_model
from training.card import ExportError, attach_card
from training.cli import start_command
from training.data import DatasetError, Split
from training.scoring import default_split_file

OUTPUT = "fake_probability"
INPUT = "input"
COMBINE_WORDS = {"max": "the most-fake of", "mean-logit": "the mean logit of"}


def check_members(cards: Sequence[ModelCard]) -> None:
    """Refuses members whose preprocessing differs in anything but the input size."""
    first = cards[0].preprocess.model_dump(exclude={"input_size"})
    for card in cards[1:]:
        if card.preprocess.model_dump(exclude={"input_size"}) != first or card.class_names != cards[0].class_names:
            raise ExportError(f"{card.name} {card.version} preprocesses faces differently from {cards[0].name}: members must differ only in input size")


def check_splits(paths: Sequence[Path], split: Split) -> None:
    """Refuses a member that trained on a photo of the ensemble's validation or test split."""
    held_out = {(name, key) for name, parts in split.datasets.items() for part in ("val", "test") for key in parts[part]}
    for path in paths[1:]:
        trained = {(name, key) for name, parts in Split.load(default_split_file(path)).datasets.items() for key in parts["train"]}
        if trained & held_out:
            raise ExportError(f"{path} was trained on {len(trained & held_out)} photos of {paths[0]}'s validation or test split")


def normalised(weights: Sequence[float] | None, count: int) -> list[float]:
    """One weight a member, summing to 1: equal where none are given."""
    weights = list(weights) if weights else [1.0] * count
    if len(weights) != count:
        raise ExportError(f"{len(weights)} --weight for {count} members: give one per member, or none for equal weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ExportError("weights must be non-negative and not all zero")
    return [w / sum(weights) for w in weights]


def member_graph(path: Path, prefix: str, size: int, ensemble_size: int) -> tuple[onnx.GraphProto, list[onnx.NodeProto]]:
    """The member's graph with its names prefixed, and the nodes that feed it the ensemble's input at its own size."""
    graph = compose.add_prefix(onnx.load(str(path)), prefix).graph
    if size == ensemble_size:
        return graph, [helper.make_node("Identity", [INPUT], [prefix + INPUT])]
    # Scales, not sizes with `axes`: ONNX Runtime's symbolic shape inference (which int8 quantization runs)
    # follows only these. The output side is floor(side * scale), exact here in float32.
    scales = helper.make_tensor(prefix + "scales", TensorProto.FLOAT, [4], [1.0, 1.0, size / ensemble_size, size / ensemble_size])
    graph.initializer.append(scales)
    resize = helper.make_node("Resize", [INPUT, "", prefix + "scales"], [prefix + INPUT], mode="cubic", antialias=1,
                              cubic_coeff_a=-0.5, coordinate_transformation_mode="half_pixel")
    return graph, [resize]


def member_logit(graph: onnx.GraphProto, output: str) -> str | None:
    """The tensor a member's final Sigmoid reads (its logit), where `output` is that Sigmoid's result, reshaped
    or not; None for a member that ends otherwise."""
    producer = {name: node for node in graph.node for name in node.output}
    node = producer.get(output)
    while node is not None and node.op_type in ("Reshape", "Identity", "Flatten", "Squeeze"):
        node = producer.get(node.input[0])
    return node.input[0] if node is not None and node.op_type == "Sigmoid" else None


def mean_logit_nodes(members: Sequence[tuple[str, str | None]], weights: Sequence[float] | None = None) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """sigmoid(weighted mean of the members' logits; equal weights by default), each flattened to (batch,). A member's logit is read before its
    final Sigmoid where it has one: log(p / (1 - p)) of a float32 p near 1 is off by a whole unit in the
    last place of p. A member without one gets the log-odds of its probability, clipped as
    service.calibration.logit clips it."""
    values = [(f"w{index}", weight) for index, weight in enumerate(normalised(weights, len(members)))]
    if any(logit is None for _, logit in members):
        values += [("eps", EPSILON), ("one_minus_eps", 1.0 - EPSILON), ("one", 1.0)]
    constants = [helper.make_tensor(name, TensorProto.FLOAT, [], [value]) for name, value in values]
    constants.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
    nodes = []
    for index, (output, logit) in enumerate(members):
        if logit is None:
            p, logit = f"c{index}_p", f"c{index}_log_odds"
            nodes += [helper.make_node("Clip", [output, "eps", "one_minus_eps"], [p]),
                      helper.make_node("Sub", ["one", p], [f"c{index}_q"]),
                      helper.make_node("Div", [p, f"c{index}_q"], [f"c{index}_odds"]),
                      helper.make_node("Log", [f"c{index}_odds"], [logit])]
        nodes += [helper.make_node("Reshape", [logit, "flat"], [f"c{index}_logit"]),
                  helper.make_node("Mul", [f"c{index}_logit", f"w{index}"], [f"c{index}_share"])]
    nodes += [helper.make_node("Sum", [f"c{i}_share" for i in range(len(members))], ["logit_mean"]),
              helper.make_node("Sigmoid", ["logit_mean"], [OUTPUT])]
    return nodes, constants


def combined_model(paths: Sequence[Path], cards: Sequence[ModelCard], combine: str = "max", weights: Sequence[float] | None = None) -> onnx.ModelProto:
    size = max(card.preprocess.input_size for card in cards)
    nodes, initializers, outputs, logits = [], [], [], []
    for index, (path, card) in enumerate(zip(paths, cards)):
        prefix = f"m{index}_"
        graph, feed = member_graph(path, prefix, card.preprocess.input_size, size)
        nodes += feed + list(graph.node)
        initializers += list(graph.initializer)
        outputs.append(prefix + OUTPUT)
        logits.append(member_logit(graph, prefix + OUTPUT))
    if combine == "mean-logit":
        combining, constants = mean_logit_nodes(list(zip(outputs, logits)), weights)
        nodes += combining
        initializers += constants
    else:
        nodes.append(helper.make_node("Max", outputs, [OUTPUT]))
    graph = helper.make_graph(
        nodes, "facecheck_ensemble",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch"])], initializer=initializers)
    opset = max(op.version for model in map(lambda p: onnx.load(str(p), load_external_data=False), paths) for op in model.opset_import if op.domain == "")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 18))], producer_name="facecheck training.ensemble")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def member_records(paths: Sequence[Path], cards: Sequence[ModelCard]) -> list[dict]:
    """What a combined model's card keeps of each member: which export it was, and how it was trained."""
    return [{"name": card.name, "version": card.version, "architecture": card.architecture, "input_size": card.preprocess.input_size,
             "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "training": card.training} for path, card in zip(paths, cards)]


def combined_card(name: str, architecture: str, cards: Sequence[ModelCard], digest: str, command: str, **training) -> ModelCard:
    """A card for a model made of `cards`' members, dated and versioned by its graph's digest, unmeasured and uncalibrated."""
    datasets = list(dict.fromkeys(d for card in cards for d in card.training.get("datasets", [])))
    return ModelCard(
        name=name, architecture=architecture, version=f"{dt.date.today():%Y.%m.%d}-{digest[:8]}",
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        preprocess=max(cards, key=lambda card: card.preprocess.input_size).preprocess,
        training={"datasets": datasets, **training, "split_sizes": cards[0].training.get("split_sizes")}, command=command)


def ensemble_card(name: str, paths: Sequence[Path], cards: Sequence[ModelCard], digest: str, command: str, combine: str = "max",
                  weights: Sequence[float] | None = None) -> ModelCard:
    shares = normalised(weights, len(cards))
    members = [f"({c.architecture})" if c.architecture.startswith("ensemble:") else f"{c.architecture} at {c.preprocess.input_size} px" for c in cards]
    if weights and len(set(shares)) > 1:
        members = [f"{member} (weight {share:.3g})" for member, share in zip(members, shares)]
    records = member_records(paths, cards)
    if weights:
        records = [record | {"weight": share} for record, share in zip(records, shares)]
    return combined_card(name, f"ensemble: {COMBINE_WORDS[combine]} " + " and ".join(members), cards, digest, command, members=records, combine=combine)


def save_combined(model: onnx.ModelProto, target: Path, card_for: Callable[[str], ModelCard], split: Split) -> Path:
    """Write a model made of members, its card (given the graph's digest) inside it, and the members' split beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    attach_card(target, card_for(hashlib.sha256(target.read_bytes()).hexdigest()))
    split.save(default_split_file(target))
    return target


def build(paths: Sequence[Path], name: str, out: Path, command: str, combine: str = "max",
          weights: Sequence[float] | None = None) -> tuple[Path, Split]:
    cards = [read_card(path) for path in paths]
    check_members(cards)
    if weights and combine != "mean-logit":
        raise ExportError("--weight weighs the members' logits: it needs --combine mean-logit")
    split = Split.load(default_split_file(paths[0]))
    check_splits(paths, split)
    target = save_combined(combined_model(paths, cards, combine, weights), out / f"{name}.onnx",
                           lambda digest: ensemble_card(name, paths, cards, digest, command, combine, weights), split)
    return target, split


def combined_parser(kind: str, doc: str | None, data_help: str, data_required: bool) -> argparse.ArgumentParser:
    """The arguments training.ensemble and training.soup share: members in, one named export out."""
    p = argparse.ArgumentParser(prog=f"python -m training.{kind}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--member", type=Path, action="append", required=True, help="an export of python -m training.export (repeat; two or more)")
    p.add_argument("--name", required=True, help=f"the {kind}'s name: <out>/<name>.onnx")
    p.add_argument("--out", type=Path, default=Path("exports"))
    p.add_argument("--data", type=Path, action="append", required=data_required, help=data_help)
    p.add_argument("--tta", default=",".join(f"{a:g}" for a in get_settings().angles_for()), help="rotations for threshold and metrics (default: FACECHECK_TTA_ANGLES, else -15,0,15)")
    p.add_argument("--figures", type=Path, help=f"reliability diagrams folder (default: runs/{kind}-<name>/calibration)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = combined_parser("ensemble", __doc__, "the split's dataset folders (repeat): measure and calibrate the ensemble", data_required=False)
    p.add_argument("--combine", choices=sorted(COMBINE_WORDS), default="max",
                   help="max: the most-fake member decides; mean-logit: the members' mean logit, as training.compare's 'mean logit' rows")
    p.add_argument("--weight", type=float, action="append",
                   help="with --combine mean-logit, each member's weight on its logit, in --member order (default: equal); normalised to sum to 1")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.ensemble", argv)
    args = parse_args(argv)
    try:
        if len(args.member) < 2:
            raise ExportError("an ensemble needs two or more --member models")
        path, split = build(args.member, args.name, args.out, command, args.combine, args.weight)
        if not args.data:
            print(path)
            return 0
        card = calibrate_model(path, args.data, split, parse_angles(args.tta), args.figures or Path("runs") / f"ensemble-{args.name}" / "calibration", command=command)
    except (ExportError, CalibrationError, DatasetError, ModelLoadError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: threshold {card.threshold:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
