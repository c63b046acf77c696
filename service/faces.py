"""Face detection with facenet-pytorch's MTCNN (its shipped weights), on a bounded-size copy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.preprocess import RESAMPLE


# P-Net's receptive field: a smaller image has no scale to search and makes MTCNN raise.
MTCNN_SMALLEST_INPUT = 12


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class DetectorSettings:
    max_side: int = 640
    min_face_size: int = 20
    min_score: float = 0.9

    def cache_key(self) -> str:
        return f"mtcnn-{self.max_side}-{self.min_face_size}-{self.min_score:.2f}"


def detector_device(setting: str) -> str:
    """The torch device for MTCNN under FACECHECK_DEVICE (auto|cpu|cuda): CUDA when present, unless cpu."""
    from service.onnx_model import cuda_present

    if setting == "cpu":
        return "cpu"
    if cuda_present():
        return "cuda"
    if setting == "cuda":
        raise RuntimeError("FACECHECK_DEVICE=cuda but torch finds no CUDA device")
    return "cpu"


class FaceDetector:
    """Finds every face in an RGB photo. Load once per process: building MTCNN costs time."""

    def __init__(self, settings: DetectorSettings = DetectorSettings(), device: str = "cpu") -> None:
        from facenet_pytorch import MTCNN

        self.settings = settings
        self.device = device
        self._mtcnn = MTCNN(keep_all=True, min_face_size=settings.min_face_size, device=device)

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces sorted by detection score, best first, with boxes in the photo's own pixels."""
        small, scale = self._bounded(image)
        if min(small.size) < MTCNN_SMALLEST_INPUT:
            return []
        boxes, scores = self._mtcnn.detect(small)
        if boxes is None:
            return []
        faces = [
            Face(tuple(float(v) / scale for v in box), float(score))
            for box, score in zip(np.asarray(boxes), np.asarray(scores))
            if score >= self.settings.min_score
        ]
        return sorted(faces, key=lambda face: face.score, reverse=True)

    def _bounded(self, image: Image.Image) -> tuple[Image.Image, float]:
        longest = max(image.size)
        if longest <= self.settings.max_side:
            return image, 1.0
        scale = self.settings.max_side / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, RESAMPLE["bilinear"]), scale
