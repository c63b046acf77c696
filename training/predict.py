"""Fake probabilities from a PyTorch model on cached crops, with optional test-time rotations."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from service.preprocess import PreprocessSpec, rotate, to_input


def device_for(choice: str = "auto") -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def rotated(crops: np.ndarray, angle: float) -> np.ndarray:
    if angle == 0:
        return crops
    return np.stack([np.asarray(rotate(Image.fromarray(c), angle)) for c in crops])


@torch.no_grad()
def predict_probs(model: nn.Module, crops: np.ndarray, spec: PreprocessSpec, angles: Sequence[float] = (0.0,),
                  batch_size: int = 128, device: torch.device | None = None) -> np.ndarray:
    """Mean fake probability over `angles` for each crop (uint8 NHWC)."""
    device = device or next(model.parameters()).device
    model.eval()
    per_angle = []
    for angle in angles:
        probs = []
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(to_input(rotated(crops[start:start + batch_size], angle), spec)).to(device, memory_format=torch.channels_last)
            probs.append(torch.sigmoid(model(batch).float()).squeeze(1).cpu().numpy())
        per_angle.append(np.concatenate(probs) if probs else np.zeros(0, np.float32))
    return np.mean(per_angle, axis=0)
