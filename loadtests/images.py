"""The images load tests and benchmarks send: real photos from ../shared/data, resized and tiled.

Sizes run from 128 to 1024 px, with one face or several (a mosaic of real faces), plus a few bad
inputs. Nothing here is written into the repository.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Payload:
    name: str
    data: bytes
    content_type: str = "image/jpeg"


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def face_files(limit: int = 200, seed: int = 0) -> list[Path]:
    files = sorted(DATA.glob("*/*/*.jpg"))
    if not files:
        raise SystemExit(f"no images under {DATA}: the load tests need ../shared/data")
    return random.Random(seed).sample(files, min(limit, len(files)))


def mosaic(files: list[Path], tile: int = 256) -> Image.Image:
    """Faces side by side, one row: a multi-face photo."""
    canvas = Image.new("RGB", (tile * len(files), tile), "white")
    for i, path in enumerate(files):
        canvas.paste(Image.open(path).convert("RGB").resize((tile, tile)), (i * tile, 0))
    return canvas


def single_face_payloads(size: int = 400, count: int = 40, seed: int = 0) -> list[Payload]:
    """One-face photos at one size: the benchmark's fixed workload."""
    return [Payload(p.name, jpeg(Image.open(p).convert("RGB").resize((size, size)))) for p in face_files(count, seed)]


def sideways(payloads: list[Payload]) -> list[Payload]:
    """The same photos turned a quarter counter-clockwise, as a photo whose EXIF orientation was lost lies."""
    return [Payload(p.name, jpeg(Image.open(io.BytesIO(p.data)).transpose(Image.Transpose.ROTATE_90)), p.content_type) for p in payloads]


def blank_payload() -> Payload:
    """A flat grey PNG, refused (422 `blank`) as soon as it is decoded: what a request for it costs is the way in and out."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
    return Payload("blank.png", buffer.getvalue(), "image/png")


def mixed_payloads(count: int = 60, seed: int = 0) -> list[Payload]:
    """Realistic traffic: sizes 128-1024, mostly one face, some with 2-4 faces."""
    rng = random.Random(seed)
    files = face_files(count * 3, seed)
    payloads = []
    for i in range(count):
        if rng.random() < 0.2:
            group = [files[(i * 3 + k) % len(files)] for k in range(rng.randint(2, 4))]
            payloads.append(Payload(f"group{i}.jpg", jpeg(mosaic(group, rng.choice([200, 256])))))
        else:
            size = rng.choice([128, 200, 400, 640, 1024])
            payloads.append(Payload(files[i].name, jpeg(Image.open(files[i]).convert("RGB").resize((size, size)))))
    return payloads


def bad_payloads() -> list[Payload]:
    truncated = jpeg(Image.open(face_files(1)[0]).convert("RGB"))
    return [
        Payload("empty.jpg", b""),
        Payload("noise.jpg", random.Random(1).randbytes(5000)),
        Payload("text.jpg", b"definitely not an image\n" * 20),
        Payload("truncated.jpg", truncated[: len(truncated) // 2]),
    ]
