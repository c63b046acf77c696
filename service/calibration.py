"""What a probability means, and when the model does not know: the calibration an export carries in its
card, and the band of calibrated probabilities answered "uncertain".

Calibration maps each crop's fake probability as ONNX Runtime gives it to one that is right as often as
it says, fitted on the validation split (training/calibrate.py). It is applied per crop, so every TTA
rotation's probability is calibrated and a face's probability stays the mean of its rotations'. The map
is monotone and vectorised; "none" is the identity, so a card without calibration behaves as before.

A face whose calibrated probability lies in [low, high) of the uncertain band is labelled "uncertain";
an image is fake when one of its faces is, else uncertain when one is, else real (`verdict`).
"""
from __future__ import annotations

from typing import Iterable, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

Label = Literal["real", "fake", "uncertain"]
# probabilities are clipped this far from 0 and 1 before their logit: ONNX Runtime's float32 sigmoid gives
# exactly 0.0 and 1.0 for confident crops, whose logit would be infinite
EPSILON = 1e-7
# the most-fake label of an image's faces decides its verdict: one fake face makes the image fake,
# otherwise one uncertain face makes it uncertain
SEVERITY: dict[str, int] = {"real": 0, "uncertain": 1, "fake": 2}


def logit(probs: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), float64, with p clipped EPSILON from 0 and 1."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(p / (1.0 - p))


class Calibration(BaseModel):
    """A monotone map of fake probabilities: none (identity), temperature scaling or isotonic regression."""

    method: Literal["none", "temperature", "isotonic"] = "none"
    temperature: float = Field(1.0, gt=0.0, description="temperature: p -> sigmoid(logit(p) / T)")
    x: list[float] = Field(default_factory=list, description="isotonic: the knots' raw probabilities, ascending")
    y: list[float] = Field(default_factory=list, description="isotonic: the knots' calibrated probabilities, non-decreasing")
    rule: str = Field("", description="how the method and its parameters were chosen")

    @model_validator(mode="after")
    def _check_knots(self) -> Calibration:
        if self.method == "isotonic":
            x, y = np.asarray(self.x, dtype=float), np.asarray(self.y, dtype=float)
            if len(x) < 2 or len(x) != len(y):
                raise ValueError("isotonic calibration needs at least two knots, as many x as y")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError("isotonic knots must be non-decreasing in x and in y")
            if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic knots must lie in [0, 1]")
        return self

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float64, of the same shape."""
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "temperature":
            return 1.0 / (1.0 + np.exp(-logit(p) / self.temperature))
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        return p


class UncertainBand(BaseModel):
    """Calibrated fake probabilities in [low, high) are answered "uncertain"."""

    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    rule: str = Field("", description="how the edges were chosen")

    @model_validator(mode="after")
    def _check_order(self) -> UncertainBand:
        if self.low > self.high:
            raise ValueError(f"the uncertain band's low edge {self.low} is above its high edge {self.high}")
        return self

    def contains(self, probs: np.ndarray | float) -> np.ndarray | bool:
        """Whether each probability lies inside the band (elementwise for arrays)."""
        return (self.low <= probs) & (probs < self.high)

    @property
    def edges(self) -> tuple[float, float]:
        return self.low, self.high


def label(probability: float, threshold: float, band: UncertainBand | None) -> Label:
    """A face's (or a faceless image's) label: uncertain inside the band, else fake at or above the threshold."""
    if band is not None and band.contains(probability):
        return "uncertain"
    return "fake" if probability >= threshold else "real"


def verdict(labels: Iterable[str]) -> Label:
    """The image's verdict from its faces' labels: fake beats uncertain beats real."""
    return max(labels, key=SEVERITY.__getitem__, default="real")
