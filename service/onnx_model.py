"""The exported classifier under ONNX Runtime: CUDA when present, CPU otherwise."""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from service.contract import ModelCard, ModelLoadError, card_from_metadata
from service.preprocess import to_input

log = logging.getLogger(__name__)


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelLoadError(f"FACECHECK_DEVICE=cuda but this onnxruntime offers only {available}")
    if device == "auto" and not cuda_present():
        return ["CPUExecutionProvider"]
    # The CUDA and cuDNN libraries of NVIDIA's wheels (onnxruntime-gpu[cuda,cudnn]): nothing else loads them
    # where torch is not imported first, as in the served image.
    ort.preload_dlls()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available]


# ONNX Runtime's default, EXHAUSTIVE, times every cuDNN algorithm for each new input shape, and MTCNN's
# pyramid and candidate counts give new shapes on nearly every photo.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def with_options(providers: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
    """The providers as InferenceSession takes them, the CUDA one with CUDA_OPTIONS."""
    return [(p, CUDA_OPTIONS) if p == "CUDAExecutionProvider" else p for p in providers]


def cuda_present() -> bool:
    """A CUDA device is usable (onnxruntime-gpu lists its CUDA provider even on machines without one).

    Asks the CUDA driver itself: importing torch for this would cost each worker ~470 MB."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def read_card(path: Path | str) -> ModelCard:
    """An export's model card, for a process that needs the card but does not run the model.

    Raises ModelLoadError for a missing or corrupt file, one without a card, or one whose input does not
    match its card, as OnnxClassifier would."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
        raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from exc
    card = card_from_metadata(session.get_modelmeta().custom_metadata_map, path)
    input_name(session, card, path)
    return card


def input_name(session, card: ModelCard, path: Path) -> str:
    """The model's one input, checked against the card's 3 x size x size."""
    (model_input,) = session.get_inputs()
    size = card.preprocess.input_size
    shape = model_input.shape
    if len(shape) != 4 or shape[1] != 3 or shape[2:] != [size, size]:
        raise ModelLoadError(f"{path}: input shape {shape} does not match the card's 3x{size}x{size}")
    return model_input.name


class OnnxClassifier:
    """Fake probabilities for face crops: uint8 NHWC (`predict_crops`) or already normalised NCHW float32 (`predict`)."""

    def __init__(self, path: Path | str, device: str = "auto", threads: int = 0) -> None:
        """`threads`: ONNX Runtime's intra-op threads on CPU; 0 lets it take one per core."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        # Idle intra-op threads sleep instead of spinning: face detection needs the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=with_options(providers_for(device)))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise ModelLoadError("FACECHECK_DEVICE=cuda but ONNX Runtime could not start its CUDA provider (no GPU or CUDA libraries)")
        self.card: ModelCard = card_from_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.input_name = input_name(self.session, self.card, self.path)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def warm_up(self) -> None:
        """One run on a blank crop, so that the first request does not pay for ONNX Runtime's lazy set-up."""
        size = self.card.preprocess.input_size
        self.predict_crops(np.zeros((1, size, size, 3), dtype=np.uint8))

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Fake probabilities for uint8 NHWC crops, normalised as the card says."""
        return self.predict(to_input(crops, self.card.preprocess))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float32)
        (probs,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return probs.reshape(-1)
