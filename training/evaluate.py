"""Evaluate a checkpoint (.pt) or an exported model (.onnx) on folder datasets.

An .onnx model goes through the service's own pipeline (decode, MTCNN faces, crops, rotations,
ONNX Runtime, most-fake face), so its numbers are the service's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from service.config import get_settings
from service.imaging import ImageError, read_image_file
from service.onnx_model import OnnxClassifier
from service.pipeline import Pipeline
from service.preprocess import PreprocessSpec
from training.cache import CachingDetector, CropCache
from training.data import Sample
from training.models import create_model
from training.predict import device_for, predict_probs


@dataclass
class Predictions:
    samples: list[Sample]
    probs: np.ndarray
    face_found: np.ndarray
    threshold: float
    unreadable: list[tuple[Sample, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def predict_onnx(model_path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    classifier = OnnxClassifier(model_path, device)
    settings = get_settings()
    pipeline = Pipeline(classifier.card, CachingDetector(), angles, settings.max_faces)
    kept, probs, found, unreadable = [], [], [], []
    for sample in tqdm(samples, desc=desc, unit="img", mininterval=2):
        try:
            image = read_image_file(str(sample.path), settings.max_bytes, settings.max_pixels)
        except ImageError as exc:
            unreadable.append((sample, str(exc)))
            continue
        result = pipeline.run(image, classifier.predict, file=str(sample.path))
        kept.append(sample)
        probs.append(result.fake_probability)
        found.append(result.face_found)
    return Predictions(kept, np.array(probs), np.array(found, dtype=bool), classifier.card.threshold, unreadable)


def load_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    state = torch.load(path, map_location=device, weights_only=False)
    model, _ = create_model(state["model_name"], pretrained="none")
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def predict_checkpoint(path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    torch_device = device_for(device)
    model, state = load_checkpoint(path, torch_device)
    spec = PreprocessSpec.model_validate(state["preprocess"])
    crops = CropCache().crop_set(list(samples), spec, desc=f"{desc} crops")
    probs = predict_probs(model, crops.crops, spec, angles or (0.0,), device=torch_device)
    return Predictions(crops.samples, probs, crops.face_found, state.get("threshold", 0.5), crops.unreadable)


def predict(model_path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    if Path(model_path).suffix == ".onnx":
        return predict_onnx(Path(model_path), samples, angles, device, desc)
    return predict_checkpoint(Path(model_path), samples, angles, device, desc)
