"""The model card: what an exported model is and how to feed it.

It lives in the ONNX file's metadata_props (one key, `facecheck.card`, holding JSON) and, for people,
in a `<name>.json` file beside it. The service reads it from the ONNX file alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from service.calibration import Calibration, UncertainBand
from service.preprocess import PreprocessSpec

CARD_KEY = "facecheck.card"
CLASS_NAMES = ("real", "fake")


class ModelCard(BaseModel):
    name: str
    architecture: str
    version: str
    created: str
    preprocess: PreprocessSpec
    class_names: tuple[str, str] = CLASS_NAMES
    output: str = "probability that the face is fake (sigmoid applied inside the graph)"
    tta_mirror: bool = Field(False, description="each rotation's crop is classified as it is and mirrored, and the two probabilities "
                             "averaged: part of how this model is applied, as its threshold, calibration and band were fitted that way")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="fake_probability (calibrated) at or above this is called fake, "
                             "outside the uncertain band")
    threshold_rule: str = ""
    calibration: Calibration = Field(default_factory=Calibration, description="the map from the network's probability to a calibrated one, "
                                     "applied per crop before anything else reads it; none for an export that was never calibrated")
    uncertain_band: UncertainBand | None = Field(None, description="calibrated probabilities in [low, high) are answered uncertain; "
                                                 "none: every answer is real or fake")
    training: dict[str, Any] = Field(default_factory=dict, description="datasets, split sizes, seed, command")
    metrics: dict[str, Any] = Field(default_factory=dict, description="test metrics per dataset")
    quantization: dict[str, Any] = Field(default_factory=dict, description="how an int8 model was made from its float model, and the accuracy change")
    sha256: str = ""
    command: str = ""


class ModelLoadError(RuntimeError):
    """A model file that is missing, corrupt, or not a facecheck export."""


def card_from_metadata(metadata: dict[str, str], source: Path) -> ModelCard:
    if CARD_KEY not in metadata:
        raise ModelLoadError(f"{source} carries no '{CARD_KEY}' metadata: export it with `python -m training.export`")
    try:
        return ModelCard.model_validate(json.loads(metadata[CARD_KEY]))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelLoadError(f"{source} has an unreadable model card: {exc}") from exc


def card_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")
