"""Export MTCNN's three networks, with the weights facenet-pytorch ships, to ONNX for service.mtcnn.

    python -m training.export_detector            # writes service/mtcnn/{pnet,rnet,onet}.onnx

Each network is checked against facenet-pytorch's own on random inputs (max abs difference <= 1e-4)
before it is written. The files are committed; rerun this only when facenet-pytorch's weights change.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from service.mtcnn import NETS_DIR

log = logging.getLogger("training.export_detector")
PARITY_TOLERANCE = 1e-4


Shape = tuple[int, int, int, int]


def networks() -> dict[str, tuple[nn.Module, list[Shape], dict]]:
    """name -> (network, input shapes to export with and check, dynamic axes).

    P-Net takes any image size, R-Net and O-Net any number of 24x24 or 48x48 candidates."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    batch = torch.export.Dim("batch", min=1, max=65536)
    height, width = torch.export.Dim("height", min=12, max=16384), torch.export.Dim("width", min=12, max=16384)
    return {
        "pnet": (PNet().eval(), [(1, 3, 61, 47), (1, 3, 12, 12), (2, 3, 241, 180)], {0: batch, 2: height, 3: width}),
        "rnet": (RNet().eval(), [(5, 3, 24, 24), (1, 3, 24, 24), (300, 3, 24, 24)], {0: batch}),
        "onet": (ONet().eval(), [(5, 3, 48, 48), (1, 3, 48, 48), (100, 3, 48, 48)], {0: batch}),
    }


def export_network(name: str, net: nn.Module, shapes: list[Shape], axes: dict, out_dir: Path) -> Path:
    path = out_dir / f"{name}.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / path.name
        torch.onnx.export(net, (torch.randn(*shapes[0]),), str(staged), dynamo=True, input_names=["x"],
                          dynamic_shapes={"x": axes}, opset_version=18, verbose=False)
        proto = onnx.load(str(staged))  # pulls in the external weights, so one self-contained file is written
        onnx.checker.check_model(proto)
        difference = parity(net, proto, shapes)
        if difference > PARITY_TOLERANCE:
            raise RuntimeError(f"{name}: ONNX Runtime differs from PyTorch by {difference:.2e} > {PARITY_TOLERANCE}")
        onnx.save(proto, str(path))
    log.info("%s: %s (max abs difference %.1e)", name, path, difference)
    return path


def parity(net: nn.Module, proto: onnx.ModelProto, shapes: list[Shape]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.inference_mode():
            expected = net(x)
        actual = session.run(None, {"x": x.numpy()})
        worst = max(worst, *(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected)))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export_detector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=NETS_DIR, help="folder for pnet.onnx, rnet.onnx and onet.onnx")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (net, shapes, axes) in networks().items():
        export_network(name, net, shapes, axes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
