"""The HTTP contract: what every endpoint answers, as pydantic models."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.calibration import Label

# Written for clients that knew only "real" and "fake": where a model (or FACECHECK_UNCERTAIN_BAND) sets an
# uncertain band, a third value comes back.
UNCERTAIN_NOTE = ('"uncertain" when the calibrated fake probability lies in model.uncertain_band [low, high): the model does not '
                  'know, have a person look. A client that reads only "real" and "fake" must treat "uncertain" as neither, not as real. '
                  'Never sent when the model has no band (model.uncertain_band is null).')
# OpenAPI 3.0 marks a field that may be null with `nullable`; BentoML's document keeps only the first
# branch of pydantic's anyOf [type, null], so optional fields say so here.
NULLABLE = {"nullable": True}


class FaceResult(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in the image's pixels (EXIF orientation applied)")
    detection_score: float
    fake_probability: float | None = Field(description="mean over the test-time rotations of their calibrated probabilities; null when not classified",
                                           json_schema_extra=NULLABLE)
    label: Label | None = Field(description=f"real, fake or uncertain; null when not classified. {UNCERTAIN_NOTE}", json_schema_extra=NULLABLE)
    tta: dict[str, float] = Field(default_factory=dict, description="calibrated fake probability per rotation angle (degrees); where the model card has tta_mirror, the mean of the rotated crop and its mirror image")
    classified: bool = True


class ModelInfo(BaseModel):
    name: str
    version: str
    architecture: str
    threshold: float = Field(description="a calibrated fake probability at or above this is fake, outside the uncertain band")
    calibration: Literal["none", "temperature", "isotonic"] = Field("none", description="how the model's probabilities were calibrated on validation")
    uncertain_band: tuple[float, float] | None = Field(None, description="[low, high): calibrated fake probabilities answered uncertain; "
                                                       "null: every answer is real or fake", json_schema_extra=NULLABLE)


class ImageResult(BaseModel):
    file: str
    verdict: Label = Field(description="fake when one face is fake, else uncertain when one face is, else real; with no face found, the "
                                       f"whole image's label. {UNCERTAIN_NOTE}")
    fake_probability: float = Field(description="the most-fake face's calibrated probability, or the whole image's when no face was found")
    face_found: bool
    faces: list[FaceResult] = Field(description="every detected face, most confident detection first; [] when none was found")
    faces_unclassified: int = Field(0, description="faces beyond FACECHECK_MAX_FACES, listed but not classified")
    whole_image: dict[str, float] | None = Field(None, description="when no face was found: the whole image's calibrated TTA probabilities",
                                                 json_schema_extra=NULLABLE)
    turned: Literal[0, 90, 180, 270] = Field(0, description="degrees counter-clockwise the photo was turned for its faces to stand upright "
                                             "before they were cropped (a photo on its side); boxes stay in the photo's own pixels. "
                                             "0 where FACECHECK_TURN_SIDEWAYS is off")
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
    """files == real + fake + uncertain + errors; no_face counts the classified files (of any verdict) in which no face was found."""

    files: int
    real: int
    fake: int
    uncertain: int = Field(description="files answered uncertain (see ImageResult.verdict)")
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
