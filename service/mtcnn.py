"""MTCNN face detection in NumPy and ONNX Runtime: facenet-pytorch's algorithm and weights, without torch.

The three networks are facenet-pytorch's, with the weights it ships, exported by
`python -m training.export_detector` into service/mtcnn/. The steps follow facenet-pytorch's
`detect_face` one for one (image pyramid, P-Net proposals, R-Net and O-Net refinement, the same
thresholds, non-maximum suppression and box regression), so the boxes agree with it (measured by
`python -m loadtests.detection_agreement`). What makes it faster:
- the networks run in ONNX Runtime, one thread per call, so concurrent images share the cores;
- the pyramid levels and the candidate crops are area-averaged, as facenet-pytorch's torch
  `interpolate(mode="area")` does, but all at once from one summed-area table of the image, and R-Net
  and O-Net see all candidates in one call each;
- `min_face_fraction` can skip the pyramid levels that only find faces smaller than a fraction of the
  image's shorter side: P-Net's cost falls with the square of the first level's size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from service.onnx_model import with_options

NETS_DIR = Path(__file__).parent / "mtcnn"
THRESHOLDS = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults for P-, R- and O-Net
PYRAMID_FACTOR = 0.709
CELL, STRIDE = 12, 2  # P-Net's window and step


@dataclass
class Candidates:
    """Boxes (n, 4) as x1, y1, x2, y2 in image pixels, their scores (n,), and regression offsets (n, 4)."""

    boxes: np.ndarray
    scores: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index: np.ndarray) -> "Candidates":
        return Candidates(self.boxes[index], self.scores[index], self.offsets[index])

    def suppress(self, threshold: float, by_smaller: bool = False) -> "Candidates":
        return self.take(nms(self.boxes, self.scores, threshold, by_smaller))

    @staticmethod
    def concat(parts: Sequence["Candidates"]) -> "Candidates":
        if not parts:
            return Candidates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.float32))
        return Candidates(*(np.concatenate(arrays) for arrays in zip(*((c.boxes, c.scores, c.offsets) for c in parts))))


class OnnxMTCNN:
    def __init__(self, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one per call: concurrent images share the cores
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No ONNX Runtime memory arena: it keeps the high-water mark of every pyramid size it has seen.
        options.enable_cpu_mem_arena = False
        self.pnet, self.rnet, self.onet = (
            ort.InferenceSession(str(NETS_DIR / f"{name}.onnx"), options, providers=with_options(providers)) for name in ("pnet", "rnet", "onet"))

    def detect(self, image: Image.Image, min_face_size: float = 20.0, smallest_face: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (n, 4) and scores (n,) of the faces in an RGB image, in its pixels.

        min_face_size starts facenet-pytorch's pyramid; smallest_face skips its levels for smaller faces."""
        table = summed_area_table(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
        found = self._propose(table, min_face_size, smallest_face)
        found = self._refine(table, found, self.rnet, 24, THRESHOLDS[1])
        found = self._refine(table, found, self.onet, 48, THRESHOLDS[2], final=True)
        return found.boxes, found.scores

    def _propose(self, table: np.ndarray, min_face_size: float, smallest_face: float) -> Candidates:
        """P-Net over the pyramid: per-level suppression, then across levels, then regression, squared."""
        height, width = table.shape[0] - 1, table.shape[1] - 1
        levels = []
        for scale in pyramid_scales(width, height, min_face_size, smallest_face):
            level = resample_image(table, int(height * scale + 1), int(width * scale + 1))
            offsets, probs = self.pnet.run(None, {"x": normalise(level[None])})
            found = pnet_candidates(offsets[0], probs[0, 1], scale, THRESHOLDS[0])
            levels.append(found.suppress(0.5))
        found = Candidates.concat(levels).suppress(0.7)
        sides = np.tile(found.boxes[:, 2:] - found.boxes[:, :2], 2)  # facenet-pytorch's P-Net regression has no +1
        return Candidates(square(found.boxes + found.offsets * sides), found.scores, found.offsets)

    def _refine(self, table: np.ndarray, found: Candidates, net, size: int, threshold: float, final: bool = False) -> Candidates:
        """R-Net or O-Net on every candidate's crop: keep the confident, regress, suppress overlaps."""
        if not len(found):
            return found
        regions, valid = clipped_regions(found.boxes, table.shape[1] - 1, table.shape[0] - 1)
        found = found.take(valid)
        if not len(found):
            return found
        outputs = net.run(None, {"x": normalise(resample_regions(table, regions, size))})
        offsets, probs = outputs[0], outputs[-1]
        keep = probs[:, 1] > threshold
        found = Candidates(found.boxes[keep], probs[keep, 1], offsets[keep])
        if final:
            found = Candidates(regress(found.boxes, found.offsets), found.scores, found.offsets)
            return found.suppress(0.7, by_smaller=True)
        found = found.suppress(0.7)
        return Candidates(square(regress(found.boxes, found.offsets)), found.scores, found.offsets)


def pyramid_scales(width: int, height: int, min_face_size: float, smallest_face: float = 0.0) -> list[float]:
    """facenet-pytorch's pyramid, less the levels whose windows stand for faces under smallest_face.

    A level at scale s looks for faces of about CELL / s pixels; one finer level than smallest_face is kept,
    because P-Net also finds faces a little larger than its window."""
    scale = CELL / min_face_size
    shortest = min(width, height) * scale
    scales = []
    while shortest >= CELL:
        if CELL / scale >= smallest_face * PYRAMID_FACTOR:
            scales.append(scale)
        scale *= PYRAMID_FACTOR
        shortest *= PYRAMID_FACTOR
    return scales


def normalise(pixels: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) in 0..255 -> float32 (n, 3, H, W) in [-1, 1], as MTCNN's networks expect."""
    return np.ascontiguousarray(((pixels - 127.5) * 0.0078125).transpose(0, 3, 1, 2), dtype=np.float32)


def summed_area_table(pixels: np.ndarray) -> np.ndarray:
    """(H + 1, W + 1, C): entry [y, x] is the sum of pixels[:y, :x]; int32 where that cannot overflow.

    OpenCV's integral image: 30x faster than two NumPy cumsums, and it releases the GIL."""
    exact_in_int32 = 255 * pixels.shape[0] * pixels.shape[1] < 2**31
    return cv2.integral(np.ascontiguousarray(pixels), sdepth=cv2.CV_32S if exact_in_int32 else cv2.CV_64F)


# Both resamplers average output pixel i over input pixels floor(i * in / out) to ceil((i + 1) * in / out),
# exactly as torch's adaptive average pooling (facenet-pytorch's `interpolate(mode="area")`) does.

def resample_image(table: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The whole image at (out_h, out_w, C) float32: whole rows, then whole columns, of the table."""
    y0, y1 = window_bounds(0, table.shape[0] - 1, out_h)
    x0, x1 = window_bounds(0, table.shape[1] - 1, out_w)
    rows = table[y1] - table[y0]
    sums = rows[:, x1] - rows[:, x0]
    return (sums / ((y1 - y0)[:, None, None] * (x1 - x0)[None, :, None])).astype(np.float32)


def resample_regions(table: np.ndarray, regions: np.ndarray, size: int) -> np.ndarray:
    """Regions (n, 4) of left, top, right, bottom, each at (size, size): (n, size, size, C) float32."""
    left, top, right, bottom = (regions[:, k : k + 1] for k in range(4))
    y0, y1 = window_bounds(top, bottom - top, size)
    x0, x1 = window_bounds(left, right - left, size)
    y0, y1, x0, x1 = y0[:, :, None], y1[:, :, None], x0[:, None, :], x1[:, None, :]
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return (sums / ((y1 - y0) * (x1 - x0))[..., None]).astype(np.float32)


def window_bounds(start, length, out: int) -> tuple[np.ndarray, np.ndarray]:
    steps = np.arange(out)
    if np.ndim(start):
        steps = steps[None, :]
    return start + (steps * length) // out, start - ((-(steps + 1) * length) // out)


def pnet_candidates(offsets: np.ndarray, face_prob: np.ndarray, scale: float, threshold: float) -> Candidates:
    """The windows of one pyramid level whose face probability reaches the threshold, in image pixels."""
    ys, xs = np.nonzero(face_prob >= threshold)
    cells = np.stack([xs, ys], axis=1).astype(np.float32)
    top_left = np.floor((STRIDE * cells + 1) / scale)
    bottom_right = np.floor((STRIDE * cells + CELL) / scale)
    boxes = np.concatenate([top_left, bottom_right], axis=1)
    return Candidates(boxes, face_prob[ys, xs], offsets[:, ys, xs].T)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    sides = np.tile(boxes[:, 2:] - boxes[:, :2] + 1, 2)
    return boxes + offsets * sides


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square on its longer side, about the same centre."""
    sizes = boxes[:, 2:] - boxes[:, :2]
    longest = sizes.max(axis=1, keepdims=True)
    top_left = boxes[:, :2] + sizes * 0.5 - longest * 0.5
    return np.concatenate([top_left, top_left + longest], axis=1)


def clipped_regions(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer crop boxes (left, top, right, bottom) clipped to the image, and which boxes have any area.

    facenet-pytorch truncates to integers and takes rows y-1..ey and columns x-1..ex (1-based, clipped)."""
    whole = np.trunc(boxes).astype(np.int64)
    left = np.maximum(whole[:, 0], 1) - 1
    top = np.maximum(whole[:, 1], 1) - 1
    right = np.minimum(whole[:, 2], width)
    bottom = np.minimum(whole[:, 3], height)
    valid = (right > left) & (bottom > top)
    return np.stack([left, top, right, bottom], axis=1)[valid], np.nonzero(valid)[0]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_smaller: bool = False) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best first.

    Overlap is intersection over union (torchvision's, no +1), or over the smaller box (facenet-pytorch's
    "Min", +1 pixel) for the last stage."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    pad = 1.0 if by_smaller else 0.0
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + pad) * (y2 - y1 + pad)
    order = np.argsort(scores)[::-1]  # as facenet-pytorch orders, ties included
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + pad)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + pad)
        inter = width * height
        overlap = inter / (np.minimum(areas[best], areas[rest]) if by_smaller else areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)
