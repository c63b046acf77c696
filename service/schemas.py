"""The HTTP contract: what every endpoint answers, as pydantic models."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Label = Literal["real", "fake"]
# OpenAPI 3.0 marks a field that may be null with `nullable`; BentoML's document keeps only the first
# branch of pydantic's anyOf [type, null], so optional fields say so here.
NULLABLE = {"nullable": True}


class FaceResult(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in the image's pixels (EXIF orientation applied)")
    detection_score: float
    fake_probability: float | None = Field(description="mean over the test-time rotations; null when not classified", json_schema_extra=NULLABLE)
    label: Label | None = Field(json_schema_extra=NULLABLE)
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
    whole_image: dict[str, float] | None = Field(None, description="when no face was found: the whole image's TTA probabilities",
                                                 json_schema_extra=NULLABLE)
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
    result: ImageResult | None = Field(None, json_schema_extra=NULLABLE)
    error: FileError | None = Field(None, json_schema_extra=NULLABLE)
    sorted_to: str | None = Field(None, json_schema_extra=NULLABLE)


class BatchSummary(BaseModel):
    files: int
    real: int
    fake: int
    no_face: int
    errors: int


class BatchResult(BaseModel):
    summary: BatchSummary
    results: list[BatchItem]
    csv: str | None = Field(None, json_schema_extra=NULLABLE)


class ErrorBody(BaseModel):
    error: str
    status: int
    reason: str
