"""Runtime settings, read once from FACECHECK_* environment variables."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.calibration import UncertainBand
from service.imaging import FORMATS, parse_formats

if TYPE_CHECKING:
    from service.contract import ModelCard

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "exports" / "default.onnx"
DEFAULT_ORIENTATION_MODEL = REPO_ROOT / "exports" / "orientation.onnx"
DEFAULT_TTA_ANGLES = (-15.0, 0.0, 15.0)  # for a model whose card records none


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACECHECK_", protected_namespaces=())

    model: Path = Field(DEFAULT_MODEL, description="Exported .onnx model to serve.")
    tta_angles: Annotated[tuple[float, ...] | None, NoDecode] = Field(
        None, description="Test-time rotations in degrees, e.g. -15,0,15; empty: the upright crop alone. Unset or 'card': the model card's, "
                          "the rotations its threshold and calibration were fitted at (-15,0,15 where the card records none).")
    uncertain_band: Annotated[Literal["card", "off"] | tuple[float, float], NoDecode] = Field(
        "card", description="Calibrated fake probabilities answered 'uncertain': card (the model card's band; none if it has none), "
                            "off (every answer real or fake), or LOW,HIGH for [LOW, HIGH).")
    turn_sideways: bool = Field(True, description="Photos on their side (no EXIF orientation) are turned until their faces stand upright, "
                                "as FACECHECK_ORIENTATION_MODEL tells, before the faces are cropped; false: every photo is read as it is.")
    orientation_model: Path = Field(DEFAULT_ORIENTATION_MODEL, description="Exported orientation network (python -m training.orientation).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest accepted upload, in bytes.")
    max_pixels: int = Field(40_000_000, gt=0, description="Largest accepted image, in pixels (checked before decoding).")
    formats: Annotated[tuple[str, ...], NoDecode] = Field(
        FORMATS, description="Image formats opened, comma-separated (e.g. JPEG,PNG,WEBP); all (or unset): every one this build supports. "
                             "Each format is a decoder that untrusted bytes reach; others are answered 400 unopened.")
    max_faces: int = Field(20, gt=0, description="Faces classified per image; further faces are reported unclassified.")
    max_batch_files: int = Field(500, gt=0, description="Files accepted by one batch request.")
    data_root: Path = Field(REPO_ROOT / "data", description="Folder that the batch endpoint may read from.")
    output_root: Path | None = Field(None, description="Folder that sorted copies go to; default <data_root>/sorted.")
    batch_size: int | None = Field(None, gt=0, description="Largest adaptive batch of crops; 1 turns adaptive batching off. "
                                   "Default (unset or 'auto'): 64 where the classifier runs on CUDA, 1 on CPU, where batches "
                                   "run no faster per crop and cost throughput (docs/benchmarks.md).")
    batch_latency_ms: int = Field(1000, gt=0, description="The classifier's latency budget per call, queueing included: with adaptive "
                                  "batching BentoML sheds calls that would exceed it, without it a call that waits this long for a "
                                  "free slot is refused; both with 503. Keep it above one full batch's run time.")
    detect_max_side: int = Field(640, ge=64, description="Detection runs on a copy no longer than this.")
    min_face_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Smallest face searched for, as a fraction of the detection copy's "
                                     "shorter side; 0 searches down to 20 px, as MTCNN does. Higher is faster and misses small faces.")
    api_workers: int = Field(2, ge=1, le=64, description="Processes that decode, detect, crop and (without adaptive batching) classify: "
                             "the FaceCheck service. One is GIL-bound at about 1.3 cores.")
    classifier_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime threads of the classifier on CPU; 0: without adaptive batching, "
                                    "the cores over the API workers (at least 1 each); with it, the cores the API workers leave to the Classifier.")
    request_timeout_s: int = Field(300, gt=0, description="Longest a request may run; a folder of 500 photos takes about 2 minutes on 2 CPU cores.")
    api_keys: SecretStr | None = Field(None, description="Comma-separated API keys, or sha256:HEX hashes of keys; with these or a keys "
                                       "file set, every endpoint but health, docs and the page needs one (service/keys.py).")
    api_keys_file: Path | None = Field(None, description="A file of API keys, one a line: the key, or better sha256:HEX of it; # comments.")
    metrics_need_key: bool = Field(False, description="Whether /metrics needs a key too, where keys are set.")
    max_concurrency: int = Field(16, gt=0, description="Requests in flight at once, split evenly over the API workers as BentoML's "
                                 "traffic.max_concurrency is; past it, 429 with Retry-After. Health, docs and /metrics are not counted. "
                                 "Keep it under what the classifier clears within FACECHECK_BATCH_LATENCY_MS, or it sheds with 503.")
    rate_per_minute: int | None = Field(None, gt=0, description="Requests a key (a client address where no keys are set) may make per "
                                        "minute, shared by the API workers; past it, 429 with Retry-After. Unset: no rate limit.")
    access_log: bool = Field(True, description="BentoML's access log: a line per request with its path, status, sizes and time. "
                             "Off leaves it out (its CPU cost is within run-to-run drift, docs/benchmarks.md); facecheck's own metrics and error logs stay.")

    @field_validator("tta_angles", mode="before")
    @classmethod
    def _parse_angles(cls, value: object) -> object:
        if isinstance(value, str):
            return None if value.strip().lower() == "card" else parse_angles(value)
        return value

    @field_validator("uncertain_band", "formats", mode="before")
    @classmethod
    def _parse_list(cls, value: object, info: ValidationInfo) -> object:
        """A comma-separated setting (or a list of its items), parsed; a bad one names its variable."""
        if isinstance(value, (tuple, list)):
            value = ",".join(map(str, value))
        parse = {"uncertain_band": parse_band, "formats": parse_formats}[info.field_name]
        try:
            return parse(value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ValueError(f"FACECHECK_{info.field_name.upper()}: {exc}") from None

    @field_validator("batch_size", mode="before")
    @classmethod
    def _parse_batch_size(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value

    @field_validator("api_keys", "api_keys_file", "rate_per_minute", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def angles_for(self, card: ModelCard | None = None) -> tuple[float, ...]:
        """The test-time rotations in force for a model: FACECHECK_TTA_ANGLES, else those its card was fitted at."""
        if self.tta_angles is not None:
            return self.tta_angles
        recorded = recorded_angles(card) if card is not None else None
        return DEFAULT_TTA_ANGLES if recorded is None else recorded

    def band_for(self, card: ModelCard) -> UncertainBand | None:
        """The uncertain band in force for a model: its card's, none (off), or FACECHECK_UNCERTAIN_BAND's edges."""
        if self.uncertain_band == "card":
            return card.uncertain_band
        if self.uncertain_band == "off":
            return None
        low, high = self.uncertain_band
        return UncertainBand(low=low, high=high, rule="FACECHECK_UNCERTAIN_BAND")

    @property
    def adaptive_batch_size(self) -> int:
        """The batch size in force: FACECHECK_BATCH_SIZE, else 64 where the classifier runs on CUDA and 1 (off) on CPU."""
        from service.onnx_model import providers_for

        if self.batch_size is not None:
            return self.batch_size
        return 64 if providers_for(self.device)[0] == "CUDAExecutionProvider" else 1

    @property
    def inline_classifier(self) -> bool:
        """Without adaptive batching, each API worker runs the classifier itself: no Classifier service and no hop to it."""
        return self.adaptive_batch_size <= 1

    @property
    def classifier_cpu_threads(self) -> int:
        cores = len(os.sched_getaffinity(0))
        if self.classifier_threads:
            return self.classifier_threads
        return max(1, cores // self.api_workers if self.inline_classifier else cores - self.api_workers)

    @property
    def classifier_calls_at_once(self) -> int:
        """Unbatched classifier calls of one API worker run side by side: as many as its share of the cores holds."""
        cores = len(os.sched_getaffinity(0))
        return max(1, (cores // self.api_workers) // self.classifier_cpu_threads)

    @property
    def orientation_path(self) -> Path | None:
        """The orientation network in force: FACECHECK_ORIENTATION_MODEL, or None where FACECHECK_TURN_SIDEWAYS is off."""
        return self.orientation_model.resolve() if self.turn_sideways else None

    @property
    def sorted_root(self) -> Path:
        return self.output_root or self.data_root / "sorted"


def recorded_angles(card: ModelCard) -> tuple[float, ...] | None:
    """The rotations a card was fitted at (empty: the upright crop alone), or None where it records none."""
    recorded = card.training.get("tta_angles")
    return None if recorded is None else tuple(float(a) for a in recorded)


def parse_angles(text: str) -> tuple[float, ...]:
    """Comma-separated degrees, as FACECHECK_TTA_ANGLES and the CLI's --tta take them: "-15,0,15"; "" is none.

    Raises ValueError for anything else."""
    return tuple(float(part) for part in text.replace(" ", "").split(",") if part)


def parse_band(text: str) -> Literal["card", "off"] | tuple[float, float]:
    """FACECHECK_UNCERTAIN_BAND: "card" (or empty), "off", or "LOW,HIGH" with 0 <= LOW <= HIGH <= 1.

    Raises ValueError, saying what is accepted, for anything else."""
    value = text.strip().lower()
    if value in ("", "card"):
        return "card"
    if value == "off":
        return "off"
    parts = value.replace(" ", "").split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"the uncertain band must be card, off or LOW,HIGH such as 0.45,0.7; got {text!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"the uncertain band LOW,HIGH needs 0 <= LOW <= HIGH <= 1; got {text!r}")
    return low, high


def settings_error(exc: ValidationError) -> str:
    """"FACECHECK_MAX_BYTES: Input should be greater than 0" for each of pydantic's errors, joined."""
    return "; ".join(_setting_error(error) for error in exc.errors())


def _setting_error(error: Any) -> str:
    name = f"FACECHECK_{str(error['loc'][0]).upper()}" if error["loc"] else "FACECHECK_*"
    return f"{name}: {error['msg'].removeprefix('Value error, ').removeprefix(f'{name}: ')}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
