"""The face-crop cache: MTCNN runs once per image file and detector setting, crops once per preprocessing spec.

Entries are keyed by the file's sha256, so renamed or moved files hit the cache and edited ones miss it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.config import get_settings
from service.faces import DetectorSettings, Face, FaceDetector
from service.imaging import ImageError, decode_image
from service.preprocess import PreprocessSpec, crop_face
from training.data import Sample

DEFAULT_CACHE = Path(os.environ.get("FACECHECK_CACHE", Path(__file__).resolve().parent.parent / ".cache"))


@dataclass
class CropSet:
    """Crops of the best face of each readable image, in sample order."""

    samples: list[Sample]
    crops: np.ndarray  # uint8 NHWC
    face_found: np.ndarray  # bool
    unreadable: list[tuple[Sample, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


class CropCache:
    def __init__(self, root: Path = DEFAULT_CACHE, detector: DetectorSettings | None = None) -> None:
        self.root = Path(root)
        self.detector = detector or DetectorSettings(max_side=get_settings().detect_max_side)

    def crop_set(self, samples: list[Sample], spec: PreprocessSpec, workers: int = 2, desc: str = "crops") -> CropSet:
        """Crops for `samples`, detecting and cropping only what the cache lacks."""
        args = [(s.path, spec.model_dump_json(), self.root, self.detector) for s in samples]
        results = _map(_crop_one, args, workers, desc)
        kept, crops, found, unreadable = [], [], [], []
        for sample, (crop, face_found, error) in zip(samples, results):
            if error:
                unreadable.append((sample, error))
                continue
            kept.append(sample)
            crops.append(crop)
            found.append(face_found)
        size = spec.input_size
        array = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        return CropSet(kept, array, np.array(found, dtype=bool), unreadable)


def _map(function, args: list, workers: int, desc: str) -> list:
    if workers <= 1 or len(args) < 8:
        return [function(a) for a in tqdm(args, desc=desc, unit="img", mininterval=2)]
    with get_context("spawn").Pool(workers, initializer=_single_thread) as pool:
        return list(tqdm(pool.imap(function, args, chunksize=8), total=len(args), desc=desc, unit="img", mininterval=2))


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


_DETECTORS: dict[DetectorSettings, FaceDetector] = {}


def _detector(settings: DetectorSettings) -> FaceDetector:
    if settings not in _DETECTORS:
        _DETECTORS[settings] = FaceDetector(settings)
    return _DETECTORS[settings]


def _crop_one(arg: tuple[Path, str, Path, DetectorSettings]) -> tuple[np.ndarray | None, bool, str]:
    path, spec_json, root, detector = arg
    spec = PreprocessSpec.model_validate_json(spec_json)
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    crop_file = root / "crops" / detector.cache_key() / spec.cache_key() / digest[:2] / f"{digest}.png"
    faces_file = root / "faces" / detector.cache_key() / digest[:2] / f"{digest}.json"
    if crop_file.exists() and faces_file.exists():
        faces = json.loads(faces_file.read_text())
        return np.asarray(Image.open(crop_file).convert("RGB")), bool(faces["faces"]), ""
    try:
        image = decode_image(data, max_bytes=len(data) + 1, max_pixels=get_settings().max_pixels)
    except ImageError as exc:
        return None, False, str(exc)
    faces = _cached_faces(image, faces_file, detector)
    crop = crop_face(image, faces[0].box if faces else None, spec)
    _write_atomic(crop_file, _png(crop))
    return np.asarray(crop), bool(faces), ""


def _cached_faces(image: Image.Image, faces_file: Path, settings: DetectorSettings) -> list[Face]:
    if faces_file.exists():
        stored = json.loads(faces_file.read_text())["faces"]
        return [Face(tuple(f["box"]), f["score"]) for f in stored]
    faces = _detector(settings).detect(image)
    payload = {"faces": [{"box": list(f.box), "score": f.score} for f in faces]}
    _write_atomic(faces_file, json.dumps(payload).encode())
    return faces


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
