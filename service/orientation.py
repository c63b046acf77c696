"""Which way up a photo's faces are, so that a photo lying on its side is answered as it would be upright.

A photo whose EXIF orientation was stripped before it was turned reaches the service on its side. MTCNN
then finds no face, or finds one lying down, and neither crop is what the classifier was trained on.
A small network (exports/orientation.onnx, trained by `python -m training.orientation`) names the
quarter turn a face crop shows; `find_upright` uses it to choose the turn whose faces are cropped.
The network runs here on the CPU: it is about 80,000 parameters on a 64 px crop, far cheaper than MTCNN.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from service.contract import ModelLoadError
from service.faces import Face
from service.preprocess import PreprocessSpec, crop_face, to_input

ORIENTATION_KEY = "facecheck.orientation"
TURNS = (0, 90, 180, 270)  # the network's classes: degrees counter-clockwise that a crop is turned from upright
SEARCH_ORDER = (0, 90, 270, 180)  # where no face is found upright: a quarter turn each way first
TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


class OrientationCard(BaseModel):
    name: str = "orientation"
    version: str
    created: str
    preprocess: PreprocessSpec
    classes: tuple[int, ...] = TURNS
    output: str = "probability of each turn in `classes` (degrees counter-clockwise from upright) that the crop shows; softmax inside the graph"
    sure: float = Field(0.9, gt=0.0, le=1.0, description="a turn whose best face is upright with at least this probability is kept "
                        "without searching the others")
    training: dict = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)
    command: str = ""


class OrientationModel:
    """The orientation network under ONNX Runtime on the CPU, one thread (it runs inside an API worker)."""

    def __init__(self, path: Path | str) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"orientation model not found: {self.path} (FACECHECK_ORIENTATION_MODEL; FACECHECK_TURN_SIDEWAYS=false runs without it)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        metadata = self.session.get_modelmeta().custom_metadata_map
        if ORIENTATION_KEY not in metadata:
            raise ModelLoadError(f"{self.path} carries no '{ORIENTATION_KEY}' card: export it with `python -m training.orientation`")
        self.card = OrientationCard.model_validate_json(metadata[ORIENTATION_KEY])
        self.input_name = self.session.get_inputs()[0].name

    def turn_probabilities(self, image: Image.Image, face: Face) -> dict[int, float]:
        """The network's probability of each turn (degrees counter-clockwise) that `face` in `image` shows."""
        crop = crop_face(image, face.box, self.card.preprocess)
        (probs,) = self.session.run(None, {self.input_name: to_input([crop], self.card.preprocess)})
        return {degrees: float(p) for degrees, p in zip(self.card.classes, probs[0])}

    def upright(self, found: Upright) -> float:
        """How sure the network is that the best face of `found` stands upright."""
        return self.turn_probabilities(found.image, found.faces[0])[0]


def configured_orientation(turn_sideways: bool | None = None) -> OrientationModel | None:
    """The orientation network of FACECHECK_ORIENTATION_MODEL, or None where turning is off: `turn_sideways`,
    else FACECHECK_TURN_SIDEWAYS."""
    from service.config import get_settings

    settings = get_settings()
    on = settings.turn_sideways if turn_sideways is None else turn_sideways
    return OrientationModel(settings.orientation_model) if on else None


class Detector(Protocol):
    def detect(self, image: Image.Image) -> list[Face]: ...


@dataclass(frozen=True)
class Upright:
    image: Image.Image  # the photo as turned
    faces: list[Face] = field(default_factory=list)  # boxes in `image`'s pixels
    degrees: int = 0  # how far the photo was turned, counter-clockwise

    def boxes_in_photo(self) -> list[Face]:
        """The faces with their boxes in the photo's own pixels."""
        width, height = self.image.size if self.degrees in (0, 180) else self.image.size[::-1]
        return [Face(box_in_photo(face.box, self.degrees, width, height), face.score) for face in self.faces]


def find_upright(image: Image.Image, detector: Detector, model: OrientationModel) -> Upright:
    """The photo's faces, found in the turn where they stand upright.

    The turns of SEARCH_ORDER are searched until one's best face is upright with the card's `sure`
    probability; where none is, the turn whose best face is most upright is kept. MTCNN also finds faces
    lying on their side, with looser boxes, so the first turn with a face is not enough. No face in
    any turn: the photo as it is, with none."""
    best, best_upright = Upright(image), -1.0
    for degrees in SEARCH_ORDER:
        candidate = searched(image, degrees, detector)
        if not candidate.faces:
            continue
        upright = model.upright(candidate)
        if upright >= model.card.sure:
            return candidate
        if upright > best_upright:
            best, best_upright = candidate, upright
    return best


def searched(image: Image.Image, degrees: int, detector: Detector) -> Upright:
    turned = image.transpose(TRANSPOSE[degrees]) if degrees else image
    return Upright(turned, detector.detect(turned), degrees)


def box_in_photo(box: tuple[float, float, float, float], degrees: int, width: int, height: int) -> tuple[float, float, float, float]:
    """A box found in the photo turned `degrees` counter-clockwise, in the pixels of the width x height photo."""
    x1, y1, x2, y2 = box
    if degrees == 90:
        return width - y2, x1, width - y1, x2
    if degrees == 180:
        return width - x2, height - y2, width - x1, height - y1
    if degrees == 270:
        return y1, height - x2, y2, height - x1
    return box
