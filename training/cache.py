"""The face-crop cache: MTCNN runs once per image and detector setting, cropping once per preprocessing spec.

Detections are keyed by the decoded pixels, so the service's own pipeline can use them through
`CachingDetector` and give exactly what a live MTCNN gives. Crops are keyed by the file's bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from service.config import get_settings
from service.faces import DetectorSettings, Face, FaceDetector, configured_detector
from service.imaging import ImageError, decode_image
from service.preprocess import RESAMPLE, PreprocessSpec, crop_face
from training.data import DatasetError, Labelled, Sample, scan_dataset

DEFAULT_CACHE = Path(os.environ.get("FACECHECK_CACHE", Path(__file__).resolve().parent.parent / ".cache"))




class CachingDetector:
    """A FaceDetector that remembers its answers on disk. MTCNN itself is loaded only on a miss."""

    def __init__(self, root: Path = DEFAULT_CACHE, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or configured_detector()
        self.folder = Path(root) / "faces" / self.settings.cache_key()
        self._detector: FaceDetector | None = None

    def detect(self, image: Image.Image) -> list[Face]:
        digest = hashlib.sha256(f"{image.size}{image.mode}".encode() + image.tobytes()).hexdigest()
        path = self.folder / digest[:2] / f"{digest}.json"
        if path.exists():
            return [Face(tuple(f["box"]), f["score"]) for f in json.loads(path.read_text())["faces"]]
        if self._detector is None:
            self._detector = FaceDetector(self.settings)
        faces = self._detector.detect(image)
        _write_atomic(path, json.dumps({"faces": [{"box": list(f.box), "score": f.score} for f in faces]}).encode())
        return faces


@dataclass
class CropSet(Labelled):
    """Crops of the best face of each readable image, in sample order."""

    samples: list[Sample]
    crops: np.ndarray  # uint8 NHWC
    face_found: np.ndarray  # bool
    unreadable: list[tuple[Sample, str]] = field(default_factory=list)

    def where(self, keep: np.ndarray) -> "CropSet":
        """The readable samples where `keep` (a bool per sample) holds; unreadable ones are dropped."""
        keep = np.asarray(keep, dtype=bool)
        return CropSet([s for s, k in zip(self.samples, keep) if k], self.crops[keep], self.face_found[keep])

    def group_weights(self, set_weights: dict[str, float] | None = None, balance: str = "classes") -> np.ndarray:
        """Sample weights, with mean 1, that draw every (dataset, label) group as a whole, whatever its size.

        balance="classes": real and fake photos half each, the groups of one class alike (so four real
        sources and three fake ones still give 50/50); "groups": every group alike. A dataset's weight
        in `set_weights` (default 1) multiplies its groups' shares within their class."""
        set_weights = set_weights or {}
        groups = [(s.dataset, s.label) for s in self.samples]
        counts = {g: groups.count(g) for g in set(groups)}
        share = {g: set_weights.get(g[0], 1.0) for g in counts}
        if balance == "classes":
            per_label = {label: sum(w for g, w in share.items() if g[1] == label) for label in {g[1] for g in share}}
            share = {g: w / per_label[g[1]] for g, w in share.items()}
        elif balance != "groups":
            raise ValueError(f"balance must be 'classes' or 'groups', got {balance!r}")
        weights = np.array([share[g] / counts[g] for g in groups])
        return weights * len(weights) / weights.sum()


class CropCache:
    def __init__(self, root: Path = DEFAULT_CACHE, detector: DetectorSettings | None = None) -> None:
        self.root = Path(root)
        self.detector = detector or configured_detector()

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


_DETECTORS: dict[tuple[Path, DetectorSettings], CachingDetector] = {}


def _crop_one(arg: tuple[Path, str, Path, DetectorSettings]) -> tuple[np.ndarray | None, bool, str]:
    path, spec_json, root, settings = arg
    spec = PreprocessSpec.model_validate_json(spec_json)
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    crop_file = root / "crops" / settings.cache_key() / spec.cache_key() / digest[:2] / f"{digest}.png"
    if crop_file.exists():
        stored = Image.open(crop_file)
        return np.asarray(stored.convert("RGB")), stored.info.get("face_found") == "1", ""
    try:
        image = decode_image(data, max_bytes=len(data) + 1, max_pixels=get_settings().max_pixels)
    except ImageError as exc:
        return None, False, str(exc)
    detector = _DETECTORS.setdefault((root, settings), CachingDetector(root, settings))
    faces = detector.detect(image) if spec.crop_mode == "face" else []
    crop = crop_face(image, faces[0].box if faces else None, spec)
    _write_atomic(crop_file, _png(crop, face_found=bool(faces)))
    return np.asarray(crop), bool(faces), ""


def _png(image: Image.Image, face_found: bool) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("face_found", "1" if face_found else "0")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def add_crop_arguments(p: argparse.ArgumentParser) -> None:
    """How a face is cut out, for every command that crops as training does (`--input-size` is each one's own)."""
    p.add_argument("--crop-mode", choices=["face", "whole"], default="face", help="MTCNN face crop, or the whole image")
    p.add_argument("--margin", type=float, default=0.3, help="context around the face box, as a fraction of its side")
    p.add_argument("--resize-filter", default="bicubic", choices=list(RESAMPLE))
    p.add_argument("--edges", choices=["black", "fit"], default="black",
                   help="where a face's square reaches past the photo: pad it with black, or fit it inside the photo (service.preprocess)")


def main(argv: list[str] | None = None) -> int:
    """Fill the crop cache for every photo of some sets ahead of training, on as many processes as there are cores."""
    p = argparse.ArgumentParser(prog="python -m training.cache", description=main.__doc__)
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset folder (repeat)")
    p.add_argument("--input-size", type=int, default=224, help="crop side, as training.train's --input-size")
    add_crop_arguments(p)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    spec = PreprocessSpec(input_size=args.input_size, margin=args.margin, resize_filter=args.resize_filter, crop_mode=args.crop_mode,
                          edges=args.edges)
    try:
        samples = [s for folder in args.data for s in scan_dataset(folder)]
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    crops = CropCache().crop_set(samples, spec, args.workers)
    print(f"{len(crops.samples)} photos cropped into {DEFAULT_CACHE}: {int((~crops.face_found).sum())} without a detected face, "
          f"{len(crops.unreadable)} unreadable")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
