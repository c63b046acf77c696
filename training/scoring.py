"""What a model says about images, and what a model file is: the predictions behind `python -m training.evaluate`.

An .onnx model is scored through the service's own pipeline (decode, MTCNN faces, crops, rotations, ONNX Runtime,
the card's calibration, most-fake face); a checkpoint on the cached crop of each image's best face, as in training. Each set of test-time
rotations is recombined from one pass over every distinct angle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from service.calibration import UncertainBand
from service.config import DEFAULT_TTA_ANGLES, REPO_ROOT, Settings, get_settings, parse_band
from service.imaging import ImageError, read_image_file
from service.onnx_model import OnnxClassifier
from service.orientation import configured_orientation
from service.pipeline import Pipeline
from service.preprocess import PreprocessSpec
from training import baselines
from training.chains import Chain
from training.cache import CachingDetector, CropCache
from training.data import Labelled, Sample
from training.models import create_model
from training.predict import device_for, predict_probs

CHECKPOINT_SUFFIXES = (".pt", ".pth")
AngleSet = tuple[float, ...]
Reencode = tuple[int, int]  # side in pixels, JPEG quality
Scorer = Callable[[np.ndarray, float], np.ndarray]  # uint8 NHWC crops, one angle -> fake probabilities


class EvaluationError(ValueError):
    """Something the user asked for that cannot be evaluated, with a one-line reason."""


@dataclass
class Predictions(Labelled):
    samples: list[Sample]
    probs: np.ndarray
    face_found: np.ndarray
    threshold: float
    unreadable: list[tuple[Sample, str]] = field(default_factory=list)
    # .onnx only: each classified face (or faceless whole image) of every sample, one row of per-angle
    # probabilities (U, angles), and the index in `samples` of the image it belongs to (U,)
    units: np.ndarray | None = None
    owners: np.ndarray | None = None
    # .onnx only: the width in pixels of each sample's deciding (most-fake) face, as the photo reached the
    # detector (after any chain); NaN where no face was found
    face_px: np.ndarray | None = None


def angle_key(angles: Sequence[float]) -> AngleSet:
    """The canonical form of a set of test-time rotations; none means the upright crop alone."""
    return tuple(float(a) for a in angles) or (0.0,)


def angle_label(angles: Sequence[float]) -> str:
    return ",".join(f"{a:g}" for a in angle_key(angles))


# --- predictions --------------------------------------------------------------------------------------


def predict_onnx(model_path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate",
                 chain: Chain | None = None, calibrated: bool = True) -> Predictions:
    key = angle_key(angles)
    return predict_onnx_sets(model_path, samples, [key], device, desc, chain, calibrated)[key]


def predict_onnx_sets(model_path: Path, samples: Sequence[Sample], angle_sets: Sequence[Sequence[float]], device: str = "auto",
                      desc: str = "evaluate", chain: Chain | None = None, calibrated: bool = True) -> dict[AngleSet, Predictions]:
    """The service pipeline once with every angle of every set; each set's score is recombined from the
    per-face, per-angle probabilities exactly as the pipeline would: mean over angles, most-fake face.

    `chain` first re-processes every image (training/chains.py), as a photo is on its way to a user.
    `calibrated` False scores with the network's own probabilities, ignoring the card's calibration
    (training/calibrate.py fits one on them)."""
    sets = list(dict.fromkeys(angle_key(a) for a in angle_sets))
    union = tuple(sorted({a for s in sets for a in s}))
    classifier = OnnxClassifier(model_path, device)
    settings = get_settings()
    pipeline = Pipeline(classifier.card, CachingDetector(), union, settings.max_faces, calibrated=calibrated, orientation=configured_orientation())
    kept, found, unreadable, owners = [], [], [], []
    probs: dict[AngleSet, list[float]] = {s: [] for s in sets}
    units: dict[AngleSet, list[list[float]]] = {s: [] for s in sets}
    widths: dict[AngleSet, list[float]] = {s: [] for s in sets}
    for sample in tqdm(samples, desc=desc, unit="img", mininterval=2):
        try:
            image = read_image_file(str(sample.path), settings.max_bytes, settings.max_pixels)
        except ImageError as exc:
            unreadable.append((sample, str(exc)))
            continue
        if chain is not None:
            image = chain(image)
        result = pipeline.run(image, classifier.predict_crops, file=str(sample.path))
        faces = [face for face in result.faces if face.classified]
        ttas = [face.tta for face in faces] or [result.whole_image or {}]
        for angle_set in sets:
            rows = [[tta[f"{a:g}"] for a in angle_set] for tta in ttas]
            means = [float(np.mean(row)) for row in rows]
            deciding = int(np.argmax(means))
            probs[angle_set].append(means[deciding])
            widths[angle_set].append(faces[deciding].box[2] - faces[deciding].box[0] if faces else float("nan"))
            units[angle_set].extend(rows)
        owners.extend([len(kept)] * len(ttas))
        kept.append(sample)
        found.append(result.face_found)
    threshold = classifier.card.threshold
    return {s: Predictions(kept, np.array(probs[s], dtype=np.float64), np.array(found, dtype=bool), threshold, unreadable,
                           np.array(units[s], dtype=np.float64).reshape(-1, len(s)), np.array(owners, dtype=np.int64),
                           np.array(widths[s], dtype=np.float64)) for s in sets}


def load_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint dict from training.train (or a baseline), or an EvaluationError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"model file not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many unrelated types for a bad file
        raise EvaluationError(f"{path} is not a readable checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(state, dict) or "model_name" not in state or "preprocess" not in state:
        raise EvaluationError(f"{path} is not a facecheck checkpoint (no model_name/preprocess): write one with `python -m training.train`")
    return state


def load_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    state = load_state(path, device)
    baselines.require_exportable(state["model_name"])
    return _torch_model(state, device), state


def _torch_model(state: dict, device: torch.device) -> torch.nn.Module:
    model, _ = create_model(state["model_name"], pretrained="none")
    model.load_state_dict(state["model"])
    return model.to(device, memory_format=torch.channels_last).eval()


def checkpoint_scorer(state: dict, spec: PreprocessSpec, device: torch.device) -> Scorer:
    """Fake probabilities of crops at one rotation: the network, or a baseline's features + classifier."""
    if baselines.is_baseline(state["model_name"]):
        return baselines.scorer(state, spec, device)
    model = _torch_model(state, device)
    return lambda crops, angle: predict_probs(model, crops, spec, (angle,), device=device)


def predict_checkpoint(path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    key = angle_key(angles)
    return predict_checkpoint_sets(path, samples, [key], device, desc)[key]


def predict_checkpoint_sets(path: Path, samples: Sequence[Sample], angle_sets: Sequence[Sequence[float]], device: str = "auto",
                            desc: str = "evaluate", workers: int = 2) -> dict[AngleSet, Predictions]:
    """Crops once, every distinct angle once, then each set's mean over its angles."""
    torch_device = device_for(device)
    state = load_state(Path(path), torch_device)
    spec = PreprocessSpec.model_validate(state["preprocess"])
    score = checkpoint_scorer(state, spec, torch_device)
    crops = CropCache().crop_set(list(samples), spec, workers, desc=f"{desc} crops")
    sets = list(dict.fromkeys(angle_key(a) for a in angle_sets))
    per_angle = {}
    for angle in sorted({a for s in sets for a in s}):
        chunks = range(0, len(crops.crops), 256)
        parts = [score(crops.crops[i:i + 256], angle) for i in tqdm(chunks, desc=f"{desc} ({angle:g} deg)", unit="batch", mininterval=2)]
        per_angle[angle] = np.concatenate(parts) if parts else np.zeros(0)
    threshold = float(state.get("threshold", 0.5))
    return {s: Predictions(crops.samples, np.mean([per_angle[a] for a in s], axis=0), crops.face_found, threshold, crops.unreadable) for s in sets}


def predict(model_path: Path, samples: Sequence[Sample], angles: Sequence[float], device: str = "auto", desc: str = "evaluate") -> Predictions:
    if Path(model_path).suffix == ".onnx":
        return predict_onnx(Path(model_path), samples, angles, device, desc)
    return predict_checkpoint(Path(model_path), samples, angles, device, desc)


def predict_sets(model_path: Path, samples: Sequence[Sample], angle_sets: Sequence[Sequence[float]], device: str = "auto",
                 desc: str = "evaluate", workers: int = 2, chain: Chain | None = None) -> dict[AngleSet, Predictions]:
    """Predictions for each set of angles, every distinct angle computed once."""
    if Path(model_path).suffix == ".onnx":
        return predict_onnx_sets(Path(model_path), samples, angle_sets, device, desc, chain)
    if chain is not None:
        raise EvaluationError("--reencode works on exported .onnx models, which see whole photos; a checkpoint sees cached crops")
    return predict_checkpoint_sets(Path(model_path), samples, angle_sets, device, desc, workers)


# --- what a model is ----------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    path: Path
    kind: str  # "checkpoint" or "onnx"
    name: str
    preprocess: PreprocessSpec
    threshold: float
    threshold_rule: str
    uncertain_band: UncertainBand | None = None  # the band the service would answer with (an export's card's by default); a checkpoint has none
    angles: tuple[float, ...] = DEFAULT_TTA_ANGLES  # the rotations the service would use with it (an export's card's)
    band_source: str = "the model card"  # where uncertain_band came from: the card, FACECHECK_UNCERTAIN_BAND or --band


def inspect_model(model_path: Path, band: str | None = None) -> ModelInfo:
    """Read what evaluation needs to know about a model file, without scoring anything. An export's
    rotations and uncertain band are those the service would use with it: FACECHECK_TTA_ANGLES and
    FACECHECK_UNCERTAIN_BAND where set, else its card's; `band` (card, off or LOW,HIGH, as that setting
    takes it) overrides the setting."""
    path = Path(model_path)
    if not path.is_file():
        raise EvaluationError(f"model file not found: {path}")
    if path.suffix == ".onnx":
        from service.contract import card_from_metadata

        try:
            import onnx

            metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for a non-ONNX file
            raise EvaluationError(f"{path} is not a loadable ONNX model ({exc.__class__.__name__})") from exc
        card = card_from_metadata(metadata, path)
        settings, source = band_settings(band)
        return ModelInfo(path, "onnx", card.name, card.preprocess, card.threshold, card.threshold_rule or "from the model card",
                         settings.band_for(card), settings.angles_for(card), "the model card" if settings.uncertain_band == "card" else source)
    if band is not None:
        raise EvaluationError("--band needs an exported model (.onnx), whose probabilities are calibrated; a checkpoint's are not")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise EvaluationError(f"unknown model file {path}: expected a training checkpoint (.pt) or an exported model (.onnx)")
    state = load_state(path)
    rule = state.get("threshold_rule", "") if "threshold" in state else "none recorded in the checkpoint (not a finished best.pt?): 0.5"
    return ModelInfo(path, "checkpoint", state["model_name"], PreprocessSpec.model_validate(state["preprocess"]),
                     float(state.get("threshold", 0.5)), rule, angles=get_settings().angles_for())


def band_settings(band: str | None) -> tuple[Settings, str]:
    """The service's settings with `band` in place of FACECHECK_UNCERTAIN_BAND, and which of the two is in force."""
    if band is None:
        return get_settings(), "FACECHECK_UNCERTAIN_BAND"
    try:
        return get_settings().model_copy(update={"uncertain_band": parse_band(band)}), "--band"
    except ValueError as exc:
        raise EvaluationError(f"--band: {exc}") from None


def default_split_file(model_path: Path) -> Path:
    """split.json beside a checkpoint; exports/<name>.split.json beside exports/<name>.onnx."""
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return model_path.with_name(f"{model_path.stem}.split.json")
    return model_path.parent / "split.json"


def default_out(model_path: Path) -> Path:
    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        return REPO_ROOT / "runs" / f"eval-{model_path.stem}"
    return model_path.parent / "eval"
