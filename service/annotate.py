"""A classified photo drawn for people: a box per face coloured by its label (red fake, green real, amber
uncertain), with its fake probability, and a banner with the image's verdict (saying plainly when no face
was found and the whole image was classified instead, and what "uncertain" means). Used by POST /annotate
and by the CLI's --annotate.

The picture keeps the photo's size (EXIF orientation applied, as the boxes are); everything is drawn
over it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw, ImageFont

from service.folders import folder_below
from service.schemas import FaceResult, ImageResult

COLOURS = {"fake": (220, 38, 38), "real": (22, 163, 74), "uncertain": (245, 158, 11), None: (150, 150, 150)}
TEXT = (255, 255, 255)
BANNER = (17, 24, 39, 200)  # dark, slightly see-through


def annotate(image: Image.Image, result: ImageResult) -> Image.Image:
    """A copy of `image` (the decoded photo `result` was computed from) with the result drawn on it."""
    canvas = image.convert("RGBA")
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width, height = canvas.size
    line = max(2, round(min(width, height) / 120))
    size = min(48, max(11, round((width * height) ** 0.5 / 24)))  # text size follows the picture's area
    for face in sorted(result.faces, key=lambda face: face.classified):  # classified faces drawn last, on top
        _draw_face(draw, face, line, size, canvas.size)
    _draw_banner(draw, banner_text(result), result.verdict, size, canvas.size)
    return Image.alpha_composite(canvas, overlay).convert("RGB")


def annotated_png(image: Image.Image, result: ImageResult) -> bytes:
    buffer = io.BytesIO()
    annotate(image, result).save(buffer, "PNG")
    return buffer.getvalue()


def face_text(face: FaceResult) -> str:
    if not face.classified or face.fake_probability is None:
        return "not classified"
    return f"{face.label} {face.fake_probability:.2f}"


def banner_text(result: ImageResult) -> str:
    verdict = f"{result.verdict.upper()}, fake probability {result.fake_probability:.2f}"
    if result.verdict == "uncertain" and result.model.uncertain_band is not None:
        low, high = result.model.uncertain_band
        verdict += f" (in the band {low:.2f}-{high:.2f}: the model is not sure)"
    if not result.face_found:
        return f"No face found; whole image classified: {verdict}"
    classified = sum(face.classified for face in result.faces)
    turned = f", read turned {result.turned} degrees" if result.turned else ""
    return f"{verdict} ({'1 face' if classified == 1 else f'most-fake of {classified} faces'}{turned})"


class AnnotationWriter:
    """Writes a file's annotated picture to <root>/<its name>.png (e.g. sub/a.jpg -> root/sub/a.jpg.png).

    Names are relative paths as a folder listing gives them; a re-run replaces its own earlier pictures.
    Nothing is written through a link below the root (service.folders.folder_below).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def relative_path(self, name: str) -> PurePosixPath:
        relative = PurePosixPath(name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts or not relative.name:
            raise ValueError(f"not a relative file name: {name!r}")
        return relative.with_name(f"{relative.name}.png")

    def path_for(self, name: str) -> Path:
        return self.root / self.relative_path(name)

    def write(self, image: Image.Image, name: str, result: ImageResult) -> Path:
        relative = self.relative_path(name)
        png = annotated_png(image, result)
        with folder_below(self.root, relative.parts[:-1]) as folder:
            partial = f".{relative.name}.{os.getpid()}.part"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=folder)
            with os.fdopen(fd, "wb") as handle:
                handle.write(png)
            os.replace(partial, relative.name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces a link in its place, never follows it
        return self.root / relative


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no font files needed


def _draw_face(draw: ImageDraw.ImageDraw, face: FaceResult, line: int, size: int, canvas: tuple[int, int]) -> None:
    colour = COLOURS[face.label if face.classified else None]
    x1, y1, x2, y2 = (round(v) for v in face.box)
    draw.rectangle((x1, y1, x2, y2), outline=(*colour, 255), width=line)
    text = face_text(face)
    font, size = _fitting_font(draw, text, size, canvas[0])
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 6)
    label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
    lx = min(max(0, x1), max(0, canvas[0] - label_w))
    ly = y1 - label_h if y1 - label_h >= 0 else min(max(0, y1), max(0, canvas[1] - label_h))  # above the box, else inside it
    draw.rectangle((lx, ly, lx + label_w, ly + label_h), fill=(*colour, 230))
    draw.text((lx + pad - left, ly + pad - top), text, font=font, fill=(*TEXT, 255))


def _draw_banner(draw: ImageDraw.ImageDraw, text: str, verdict: str, size: int, canvas: tuple[int, int]) -> None:
    width, height = canvas
    font, size = _fitting_font(draw, text, size, width)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(3, size // 3)
    banner_h = bottom - top + 2 * pad
    y0 = max(0, height - banner_h)
    draw.rectangle((0, y0, width, height), fill=BANNER)
    stripe = max(3, pad // 2)
    draw.rectangle((0, y0, stripe, height), fill=(*COLOURS[verdict], 255))
    draw.text((stripe + pad - left, y0 + pad - top), text, font=font, fill=(*TEXT, 255))


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, size: int, max_width: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """The default font at `size`, or smaller (down to 8 px) so that `text` fits in `max_width`; and its size."""
    while True:
        font = _font(size)
        left, _, right, _ = draw.textbbox((0, 0), text, font=font)
        needed = right - left + size
        if needed <= max_width or size <= 8:
            return font, size
        size = max(8, min(size - 1, int(size * max_width / needed)))
