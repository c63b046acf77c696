"""Face detection: MTCNN with facenet-pytorch's weights, on a bounded-size copy of the photo.

Two backends give the same boxes (loadtests.detection_agreement measures it): "onnx", service.mtcnn's
NumPy + ONNX Runtime version, the default; and "facenet", facenet-pytorch's own MTCNN under torch, kept
as the reference that the benchmark and the agreement check compare against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

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
    # Smallest face searched for, as a fraction of the (bounded) image's shorter side: skips the finest
    # levels of facenet-pytorch's pyramid, where most of P-Net's time goes, and keeps the others as they are.
    min_face_fraction: float = 0.0
    min_score: float = 0.9
    backend: Literal["onnx", "facenet"] = "onnx"

    def cache_key(self) -> str:
        """Names the boxes these settings find; the backends find the same ones."""
        fraction = f"-f{self.min_face_fraction:g}" if self.min_face_fraction else ""
        return f"mtcnn-{self.max_side}-{self.min_face_size}-{self.min_score:.2f}{fraction}"

    def __post_init__(self) -> None:
        if self.min_face_fraction and self.backend == "facenet":
            raise ValueError("min_face_fraction needs the onnx backend; facenet-pytorch searches every pyramid level")

    def smallest_face(self, width: int, height: int) -> float:
        return self.min_face_fraction * min(width, height)


def configured_detector() -> DetectorSettings:
    """The detector settings of FACECHECK_DETECT_MAX_SIDE and FACECHECK_MIN_FACE_FRACTION."""
    from service.config import get_settings

    settings = get_settings()
    return DetectorSettings(max_side=settings.detect_max_side, min_face_fraction=settings.min_face_fraction)


def detector_device(setting: str) -> str:
    """Where MTCNN runs under FACECHECK_DEVICE (auto|cpu|cuda): CUDA when present, unless cpu."""
    from service.onnx_model import cuda_present

    if setting == "cpu":
        return "cpu"
    if cuda_present():
        return "cuda"
    if setting == "cuda":
        raise RuntimeError("FACECHECK_DEVICE=cuda but the CUDA driver finds no device")
    return "cpu"


class FaceDetector:
    """Finds every face in an RGB photo. Load once per process: building MTCNN costs time."""

    def __init__(self, settings: DetectorSettings = DetectorSettings(), device: str = "cpu") -> None:
        self.settings = settings
        self.device = device
        self._detect = _onnx_backend(device) if settings.backend == "onnx" else _facenet_backend(device)

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces sorted by detection score, best first, with boxes in the photo's own pixels."""
        small, scale = self._bounded(image)
        if min(small.size) < MTCNN_SMALLEST_INPUT:
            return []
        boxes, scores = self._detect(small, self.settings.min_face_size, self.settings.smallest_face(*small.size))
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


# (image, min face px, smallest face px) -> boxes (n, 4), scores (n,)
Backend = Callable[[Image.Image, float, float], tuple[np.ndarray, np.ndarray]]


def _onnx_backend(device: str) -> Backend:
    from service.mtcnn import OnnxMTCNN
    from service.onnx_model import providers_for

    return OnnxMTCNN(providers_for(device)).detect


def _facenet_backend(device: str) -> Backend:
    import torch
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.utils.detect_face import detect_face

    mtcnn = MTCNN(keep_all=True, device=device)

    def detect(image: Image.Image, min_face_size: float, smallest_face: float) -> tuple[np.ndarray, np.ndarray]:
        # MTCNN.detect with the minimum face size as an argument; smallest_face is 0 (see DetectorSettings).
        with torch.no_grad():
            (found,), _ = detect_face(image, min_face_size, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.thresholds, mtcnn.factor, device)
        found = np.asarray(found, dtype=np.float32).reshape(-1, 5)
        return found[:, :4], found[:, 4]

    return detect
