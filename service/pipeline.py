"""One image's way through the model: faces -> crops -> rotations (and mirror images) -> probabilities -> calibration -> labels -> a result.

`prepare` and `assemble` are split so the service can send the crops of many requests to one batched
ONNX Runtime call in between; `run` joins them for in-process callers (CLI, evaluation, benchmarks).
`assemble` is where the card's calibration is applied (service/calibration.py), to each crop's
probability as ONNX Runtime gave it, for every caller alike, and where faces and the image get their labels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
from PIL import Image, ImageOps

from service.calibration import UncertainBand, label, verdict
from service.config import DEFAULT_TTA_ANGLES
from service.contract import ModelCard
from service.faces import Face, FaceDetector
from service.orientation import OrientationModel, Upright, find_upright
from service.preprocess import crop_face, rotate, stack_crops
from service.schemas import FaceResult, ImageResult, ModelInfo

# Fake probabilities (N,) for uint8 NHWC crops; the classifier applies its own normalisation (its card).
Classify = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prepared:
    file: str
    faces: list[Face]
    classified: int  # faces sent to the model; the whole image counts as one when no face was found
    crops: np.ndarray  # (units * angles * views, H, W, 3) uint8: a quarter of the float input's bytes to send to the classifier
    timings_ms: dict[str, float] = field(default_factory=dict)
    turned: int = 0  # degrees counter-clockwise the photo was turned for its faces to stand upright


class Pipeline:
    def __init__(self, card: ModelCard, detector: FaceDetector, angles: Sequence[float] = DEFAULT_TTA_ANGLES, max_faces: int = 20,
                 band: UncertainBand | None | Literal["card"] = "card", calibrated: bool = True,
                 orientation: OrientationModel | None = None) -> None:
        """`band`: the uncertain band in force ("card": the card's; None: none, every answer real or fake);
        `calibrated`: False leaves the network's probabilities as they are (to fit a calibration on them);
        `orientation`: where given, a photo's faces are found in the turn where they stand upright (service/orientation.py).
        Each rotation is one crop, or two where the card asks for its mirror image too (`tta_mirror`)."""
        self.card = card
        self.detector = detector
        self.angles = tuple(angles) or (0.0,)
        self.views = 2 if card.tta_mirror else 1
        self.max_faces = max_faces
        self.orientation = orientation
        self.band = card.uncertain_band if band == "card" else band
        self.calibration = card.calibration if calibrated else None
        self.model_info = ModelInfo(name=card.name, version=card.version, architecture=card.architecture, threshold=card.threshold,
                                    calibration=card.calibration.method if calibrated else "none",
                                    uncertain_band=self.band.edges if self.band is not None else None)

    def prepare(self, image: Image.Image, file: str = "", timings_ms: dict[str, float] | None = None) -> Prepared:
        timings = dict(timings_ms or {})
        started = time.perf_counter()
        found = self._faces(image)
        timings["detect"] = ms_since(started)
        started = time.perf_counter()
        boxes = [face.box for face in found.faces[: self.max_faces]] or [None]
        crops = [view for crop in (crop_face(found.image, box, self.card.preprocess) for box in boxes) for angle in self.angles
                 for view in self._views(rotate(crop, angle))]
        timings["crop"] = ms_since(started)
        return Prepared(file, found.boxes_in_photo(), len(boxes) if found.faces else 0, stack_crops(crops), timings, found.degrees)

    def assemble(self, prepared: Prepared, probs: np.ndarray, classify_ms: float = 0.0) -> ImageResult:
        per_unit = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.angles), self.views).mean(axis=2)
        if self.calibration is not None:
            per_unit = self.calibration.apply(per_unit)
        tta = [{f"{angle:g}": float(p) for angle, p in zip(self.angles, row)} for row in per_unit]
        means = per_unit.mean(axis=1)
        faces = [self._face(face, index, means, tta) for index, face in enumerate(prepared.faces)]
        image_probability = float(means.max())
        labels = [face.label for face in faces if face.classified] if prepared.faces else [self._label(image_probability)]
        return ImageResult(
            file=prepared.file,
            verdict=verdict(labels),
            fake_probability=image_probability,
            face_found=bool(prepared.faces),
            faces=faces,
            faces_unclassified=len(prepared.faces) - prepared.classified,
            whole_image=None if prepared.faces else tta[0],
            turned=prepared.turned,
            model=self.model_info,
            timings_ms={**prepared.timings_ms, "classify": classify_ms},
        )

    def run(self, image: Image.Image, classify: Classify, file: str = "", timings_ms: dict[str, float] | None = None) -> ImageResult:
        prepared = self.prepare(image, file, timings_ms)
        started = time.perf_counter()
        probs = classify(prepared.crops)
        return self.assemble(prepared, probs, ms_since(started))

    def _faces(self, image: Image.Image) -> Upright:
        if self.card.preprocess.crop_mode != "face":
            return Upright(image)
        if self.orientation is not None:
            return find_upright(image, self.detector, self.orientation)
        return Upright(image, self.detector.detect(image))

    def _views(self, crop: Image.Image) -> list[Image.Image]:
        return [crop, ImageOps.mirror(crop)] if self.views == 2 else [crop]

    def _face(self, face: Face, index: int, means: np.ndarray, tta: list[dict[str, float]]) -> FaceResult:
        if index >= self.max_faces:
            return FaceResult(box=face.box, detection_score=face.score, fake_probability=None, label=None, classified=False)
        probability = float(means[index])
        return FaceResult(box=face.box, detection_score=face.score, fake_probability=probability, label=self._label(probability), tta=tta[index])

    def _label(self, probability: float) -> str:
        return label(probability, self.card.threshold, self.band)


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
