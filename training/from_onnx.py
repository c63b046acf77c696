"""A trainable checkpoint back from an export, so a model kept only as ONNX (exports/, git) can be fine-tuned.

    python -m training.from_onnx --model exports/default.onnx --data ../shared/data/tpdne128 --out runs/x/from_onnx.pt
    python -m training.train --pretrained runs/x/from_onnx.pt ...
    python -m training.from_onnx --model exports/default.onnx --member 1 ...   # an ensemble's second network

The exporter folds each batch norm into the convolution before it, so the graph holds one weight and one
bias per convolution. Loaded as they are, with every batch norm an identity plus that bias, the network
answers exactly as the export does, but only in eval mode: in training, a batch norm divides by its batch's
own statistics. So each batch norm is given the per-channel mean and variance of its input over some
training crops, as its running statistics and as its scale and shift, which keeps the eval-mode function
exact and makes the training-mode one the same up to how far a batch's statistics stray from them.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from service.calibration import Calibration
from service.onnx_model import read_card
from service.preprocess import to_input
from training.cache import CropCache
from training.card import ExportError, attach_card
from training.cli import start_command
from training.data import DatasetError, Split, scan_dataset
from training.models import MODELS, create_model

log = logging.getLogger(__name__)
WRAPPER_PREFIX = "model."  # training.export wraps the network as ProbabilityModel.model


def fused_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each named convolution or linear layer's (weight, bias) as the export holds them."""
    graph = onnx.load(str(path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = node.input[1]
        if not weight.startswith(WRAPPER_PREFIX) or weight not in tensors:
            raise ExportError(f"{path}: a {node.op_type} weight is named {weight!r}, not after its module; "
                              "only exports from training.export's dynamo path can be read back")
        bias = tensors.get(node.input[2]) if len(node.input) > 2 else None
        layers[weight[len(WRAPPER_PREFIX):].removesuffix(".weight")] = (tensors[weight], bias)
    return layers


def following_batch_norms(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Each convolution whose output goes straight into a batch norm, by the order modules are declared."""
    modules = list(model.named_modules())
    pairs = {}
    for (name, module), (_, after) in zip(modules, modules[1:]):
        if isinstance(module, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
            pairs[name] = after
    return pairs


def load_fused(model: nn.Module, layers: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
    """The export's weights into the network, each folded batch norm an identity that adds the bias."""
    own = dict(model.named_modules())
    norms = following_batch_norms(model)
    missing = [name for name, m in own.items() if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in layers]
    if missing:
        raise ExportError(f"the export has no weights for {', '.join(missing[:5])}: is it this architecture?")
    with torch.no_grad():
        for name, (weight, bias) in layers.items():
            layer = own[name]
            if tuple(layer.weight.shape) != weight.shape:
                raise ExportError(f"{name}: the export's weight is {weight.shape}, the network's {tuple(layer.weight.shape)}")
            layer.weight.copy_(torch.from_numpy(np.array(weight)))
            if name in norms:
                _identity_plus(norms[name], torch.from_numpy(np.array(bias)) if bias is not None else 0.0)
                if layer.bias is not None:  # folded into the batch norm's shift with the rest
                    layer.bias.zero_()
            elif bias is not None:
                layer.bias.copy_(torch.from_numpy(np.array(bias)))


def _identity_plus(norm: nn.BatchNorm2d, bias: torch.Tensor | float) -> None:
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0 - norm.eps)
    norm.weight.fill_(1.0)
    norm.bias.copy_(torch.as_tensor(bias).expand_as(norm.bias))


@torch.no_grad()
def restore_batch_statistics(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Give each batch norm its input's statistics without changing what the network computes in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sums = {id(n): [0.0, 0.0, 0] for n in norms}

    def record(norm: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0].double()
        total = sums[id(norm)]
        total[0] = total[0] + x.sum((0, 2, 3))
        total[1] = total[1] + (x * x).sum((0, 2, 3))
        total[2] += x.numel() // x.shape[1]

    hooks = [n.register_forward_pre_hook(record) for n in norms]
    model.eval()
    for batch in batches:
        model(batch)
    for hook in hooks:
        hook.remove()
    for norm in norms:
        first, second, count = sums[id(norm)]
        mean = first / count
        var = (second / count - mean * mean).clamp_min(0.0)
        # eval mode: (x - mean) / sqrt(var + eps) * sqrt(var + eps) + (mean + b) == x + b, as before
        norm.bias.add_(mean.float())
        norm.weight.copy_((var + norm.eps).sqrt().float())
        norm.running_mean.copy_(mean.float())
        norm.running_var.copy_(var.float())


def member_export(ensemble: Path, index: int, folder: Path) -> Path:
    """Member `index` of a training.ensemble export, as a standalone export in `folder` (its names unprefixed,
    its card the ensemble's with the member's name, architecture and training), beside the ensemble's split."""
    card = read_card(ensemble)
    members = card.training.get("members") or []
    if not 0 <= index < len(members):
        raise ExportError(f"{ensemble} has {len(members)} members (training.members in its card); there is no member {index}")
    prefix = f"m{index}_"
    model = onnx.load(str(ensemble))
    graph = model.graph
    feed = prefix + "input"  # the ensemble's Identity (or Resize) that hands the member its input
    nodes = [node for node in graph.node if all(name.startswith(prefix) for name in node.output) and node.output[0] != feed]
    for node in nodes:
        node.name = node.name.removeprefix(prefix)
        node.input[:] = [name.removeprefix(prefix) for name in node.input]
        node.output[:] = [name.removeprefix(prefix) for name in node.output]
    initializers = [tensor for tensor in graph.initializer if tensor.name.startswith(prefix)]
    for tensor in initializers:
        tensor.name = tensor.name.removeprefix(prefix)
    output = next(o for o in graph.output)
    member = onnx.helper.make_model(onnx.helper.make_graph(nodes, f"member{index}", list(graph.input), [output], initializers),
                                    opset_imports=model.opset_import, ir_version=model.ir_version)
    info = members[index]
    path = folder / f"{ensemble.stem}-member{index}.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(member, str(path))
    attach_card(path, card.model_copy(update={"name": info["name"], "architecture": info["architecture"], "version": info["version"],
                                              "training": info.get("training", {}), "calibration": Calibration(), "uncertain_band": None}))
    shutil.copyfile(ensemble.with_suffix(".split.json"), path.with_suffix(".split.json"))
    return path


def checkpoint_from_export(onnx_path: Path, data: list[Path], crops: int = 512, seed: int = 0, command: str = "") -> tuple[nn.Module, dict]:
    card = read_card(onnx_path)
    if card.architecture not in MODELS:
        raise ExportError(f"{onnx_path} is a {card.architecture!r}, which has no trainable network here (an ensemble? convert its members)")
    model, _ = create_model(card.architecture, "none")
    load_fused(model, fused_weights(onnx_path))
    split = Split.load(onnx_path.with_suffix(".split.json"))
    samples = [s for folder in data for s in scan_dataset(folder)]
    train = split.select(samples, "train")
    chosen = np.random.default_rng(seed).permutation(len(train))[:crops]
    crop_set = CropCache().crop_set([train[i] for i in chosen], card.preprocess, desc="statistics crops")
    tensors = torch.from_numpy(to_input(crop_set.crops, card.preprocess))
    restore_batch_statistics(model, list(tensors.split(64)))
    state = {"model": model.state_dict(), "model_name": card.architecture, "preprocess": card.preprocess.model_dump(),
             "origin": f"{onnx_path} ({card.name} {card.version}), batch norms restored from {len(chosen)} training crops",
             "datasets": [str(d) for d in data], "recipe": [c for c in [*card.training.get("command", "").split(" && "), command] if c],
             "threshold": card.threshold}
    return model, state


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.from_onnx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="an export (.onnx beside its .split.json)")
    p.add_argument("--data", type=Path, action="append", required=True, help="the export's training sets, for the batch statistics")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write (use it as --pretrained)")
    p.add_argument("--crops", type=int, default=512, help="training crops whose statistics the batch norms take")
    p.add_argument("--member", type=int, metavar="N", help="of a training.ensemble export, its member N (0: the first), written beside --out as an export too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv, command = start_command("training.from_onnx", argv)
    args = parse_args(argv)
    try:
        model = args.model if args.member is None else member_export(args.model, args.member, args.out.parent)
        _, state = checkpoint_from_export(model, args.data, args.crops, command=command)
    except (ExportError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
