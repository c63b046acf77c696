"""Images the service tests make themselves, the shared data set when this checkout has it, and what
every answer of the service promises (assert_consistent, assert_error, assert_summary_adds_up)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw, ImageFilter

from service.calibration import Calibration
from service.config import get_settings
from service.contract import ModelCard
from service.onnx_model import read_card

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SERVER_START_S = 600  # a generous budget for a test server to start: 10-40 s on 2 cores, idle or busy
# The test server runs with this process's FACECHECK_* settings (data root and limits aside), so the
# suite can be pointed at another model or other TTA angles through the environment.
SERVED_CARD = read_card(get_settings().model)
ANGLES = get_settings().angles_for(SERVED_CARD) or (0.0,)
CROPS_PER_FACE = len(ANGLES) * (2 if SERVED_CARD.tta_mirror else 1)  # what a face sends the classifier
ANGLE_KEYS = {f"{angle:g}" for angle in ANGLES}
# The keyed test server's keys (tests/conftest.py): one given as itself, one by its SHA-256 only; and one it does not know.
ENV_KEY = "fc-env-key-5b8e0f3c9a1d47e2"
FILE_KEY = "fc-file-key-0d9c6a2b7e4f8135"
WRONG_KEY = "fc-wrong-key-77aa31c0e5d94b6f"


def server_env(base: Path, **settings: str) -> dict[str, str]:
    """The environment of a server of a test's own: this process's, with only its model and TTA angles of its FACECHECK_*
    settings, a data root and BentoML home under `base`, and `settings`."""
    data = base / "data"
    data.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACECHECK_") or key in ("FACECHECK_MODEL", "FACECHECK_TTA_ANGLES")}
    return env | {"FACECHECK_DATA_ROOT": str(data), "BENTOML_HOME": str(base / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", **settings}


def synthetic_face(size: int = 256, seed: int = 0, skin: tuple[int, int, int] = (224, 182, 150)) -> Image.Image:
    """A drawn face (head, hair, eyes, brows, nose, mouth) that MTCNN finds with a score above 0.99."""
    image = Image.new("RGB", (size, size), (70, 90, 120))
    draw = ImageDraw.Draw(image)
    s = size / 256

    def box(*xy: float) -> list[float]:
        return [v * s for v in xy]

    draw.ellipse(box(68, 40, 188, 210), fill=skin)
    draw.ellipse(box(60, 20, 196, 90), fill=(60, 40, 30))
    draw.ellipse(box(68, 60, 188, 130), fill=skin)
    for x in (98, 158):
        draw.ellipse(box(x - 16, 100, x + 16, 116), fill=(255, 255, 255))
        draw.ellipse(box(x - 7, 101, x + 7, 115), fill=(60, 40, 20))
        draw.rectangle(box(x - 18, 88, x + 18, 93), fill=(80, 50, 30))
    draw.polygon([(128 * s, 112 * s), (118 * s, 150 * s), (138 * s, 150 * s)], fill=(200, 150, 120))
    draw.ellipse(box(104, 164, 152, 182), fill=(170, 70, 70))
    image = image.filter(ImageFilter.GaussianBlur(2 * s))
    noise = np.random.default_rng(seed).normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def uncalibrated_card() -> ModelCard:
    """The shipped model's card without calibration, uncertain band or mirrored views, as every card was
    before they existed: for tests that feed the pipeline fixed probabilities and check what comes out by hand."""
    return read_card(get_settings().model).model_copy(update={"calibration": Calibration(), "uncertain_band": None, "tta_mirror": False})


def gradient(width: int = 320, height: int = 240) -> Image.Image:
    """A smooth colour ramp: no face anywhere."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def tiny_png() -> bytes:
    """An 8x8 colour ramp: a picture (not one flat colour, which is refused as blank) with no face, and no
    detection work to speak of, so that requests reach the classifier together."""
    return encode(gradient(8, 8), "PNG")


def mosaic(images: list[Image.Image], side: int) -> Image.Image:
    """The images resized to side x side and placed side by side, with a gap between them."""
    gap = side // 4
    canvas = Image.new("RGB", (len(images) * side + (len(images) - 1) * gap, side), (128, 128, 128))
    for index, image in enumerate(images):
        canvas.paste(image.convert("RGB").resize((side, side)), (index * (side + gap), 0))
    return canvas


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels (900 megapixels for 30000) in about 110 kB."""
    row = b"\x00" * (1 + (side + 7) // 8)
    deflate = zlib.compressobj(9)
    block = row * 1000
    data = b"".join([deflate.compress(block) for _ in range(side // 1000)] + [deflate.compress(row * (side % 1000)), deflate.flush()])

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def shared_images(subset: str, count: int) -> list[Path]:
    """The first `count` images of ../shared/data/<subset> (e.g. "rff/fake"), or a skip when absent."""
    folder = SHARED_DATA / subset
    files = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if len(files) < count:
        pytest.skip(f"needs {count} images in {folder} (the shared data set is not next to this checkout)")
    return files


SEVERITY = {"real": 0, "uncertain": 1, "fake": 2}


def expected_label(probability: float, model: dict) -> str:
    """The label the service promises for a probability: uncertain inside the model's band [low, high), else fake at the threshold."""
    band = model["uncertain_band"]
    if band is not None and band[0] <= probability < band[1]:
        return "uncertain"
    return "fake" if probability >= model["threshold"] else "real"


def assert_consistent(result: dict) -> None:
    """What every ImageResult promises, whatever the model says."""
    assert 0.0 <= result["fake_probability"] <= 1.0
    assert result["face_found"] == bool(result["faces"])
    assert set(result["timings_ms"]) >= {"decode", "detect", "crop", "classify"}
    classified = [face for face in result["faces"] if face["classified"]]
    if classified:
        assert result["fake_probability"] == pytest.approx(max(face["fake_probability"] for face in classified), abs=1e-12)
        for face in classified:
            assert face["label"] == expected_label(face["fake_probability"], result["model"])
            assert set(face["tta"]) == ANGLE_KEYS
            assert face["fake_probability"] == pytest.approx(sum(face["tta"].values()) / len(ANGLE_KEYS), abs=1e-9)
    else:
        assert set(result["whole_image"]) == ANGLE_KEYS
        assert result["fake_probability"] == pytest.approx(sum(result["whole_image"].values()) / len(ANGLE_KEYS), abs=1e-9)
    # fake when one face is fake, else uncertain when one is, else real; the whole image's label when no face was found
    labels = [face["label"] for face in classified] or [expected_label(result["fake_probability"], result["model"])]
    assert result["verdict"] == max(labels, key=SEVERITY.__getitem__)


def assert_error(response: requests.Response, status: int, reason: str | None = None) -> None:
    """A refusal in the service's JSON error shape; `reason` None accepts any."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "status", "reason"}
    assert body["status"] == status and (reason is None or body["reason"] == reason)
    assert isinstance(body["error"], str) and body["error"]


def assert_summary_adds_up(body: dict) -> None:
    summary, results = body["summary"], body["results"]
    assert summary["files"] == len(results) == summary["real"] + summary["fake"] + summary["uncertain"] + summary["errors"]
    assert summary["errors"] == sum(not item["ok"] for item in results)
    for verdict in ("fake", "uncertain"):
        assert summary[verdict] == sum(item["ok"] and item["result"]["verdict"] == verdict for item in results)
    assert summary["no_face"] == sum(item["ok"] and not item["result"]["face_found"] for item in results)
    for item in results:
        assert (item["result"] is not None) == item["ok"]
        assert (item["error"] is not None) != item["ok"]
