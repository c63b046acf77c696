"""The HTTP contract: what every endpoint answers, as pydantic models."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Label = Literal["real", "fake"]


class FaceResult(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in the image's pixels (EXIF orientation applied)")
    detection_score: float
    fake_probability: float | None = Field(description="mean over the test-time rotations; null when not classified")
    label: Label | None
    tta: dict[str, float] = Field(default_factory=dict, description="fake probability per rotation angle (degrees)")
    classified: bool = True


class ModelInfo(BaseModel):
    name: str
    version: str
    architecture: str
    threshold: float


class ImageResult(BaseModel):
    file: str
    verdict: Label
    fake_probability: float = Field(description="the most-fake face's probability, or the whole image's when no face was found")
    face_found: bool
    faces: list[FaceResult] = Field(description="every detected face, most confident detection first; [] when none was found")
    faces_unclassified: int = Field(0, description="faces beyond FACECHECK_MAX_FACES, listed but not classified")
    whole_image: dict[str, float] | None = Field(None, description="when no face was found: the whole image's TTA probabilities")
    model: ModelInfo
    timings_ms: dict[str, float]


class FileError(BaseModel):
    file: str
    status: int
    error: str
    reason: str


class BatchItem(BaseModel):
    file: str
    ok: bool
    result: ImageResult | None = None
    error: FileError | None = None
    sorted_to: str | None = None


class BatchSummary(BaseModel):
    files: int
    real: int
    fake: int
    no_face: int
    errors: int


class BatchResult(BaseModel):
    summary: BatchSummary
    results: list[BatchItem]
    csv: str | None = None


class ErrorBody(BaseModel):
    error: str
    status: int
    reason: str
