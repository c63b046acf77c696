"""Turn untrusted bytes into an RGB image, or a clear client error.

Every limit is checked before the pixels are decoded, so a decompression bomb costs a header read.
Only the formats photos come in are opened: Pillow's other plugins (PostScript through Ghostscript,
PSD, FITS, ...) are code that untrusted bytes need not reach.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features
from pillow_heif import register_heif_opener

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own pixel limit is checked explicitly; Pillow's global one would raise on its own terms.
Image.MAX_IMAGE_PIXELS = None
# JPEG includes MPO (a JPEG with more pictures, as phones write them): Pillow's JPEG opener returns those.
# AVIF (as many sites now serve photos) where Pillow was built with libavif, as its wheels are since 11.3.
# HEIF/HEIC, what iPhones save photos as, through pillow-heif (libheif; it applies the photo's rotation itself).
register_heif_opener()
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", *(("AVIF",) if features.check("avif") else ()))
# Per channel, out of 255: slack for an encoder's rounding or dither on a flat colour (JPEG keeps one exact).
BLANK_LEVELS = 2
_ALIASES = {"JPG": "JPEG", "HEIC": "HEIF", "TIF": "TIFF"}


def format_names(formats: Sequence[str] = FORMATS) -> str:
    """The formats as people know them: "JPEG, PNG or WebP"."""
    names = [{"WEBP": "WebP", "HEIF": "HEIC"}.get(f, f) for f in formats]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"


def parse_formats(text: str) -> tuple[str, ...]:
    """Comma-separated format names ("jpeg,png,heic") as Pillow names them, each one this build can open; "all": FORMATS."""
    if text.strip().lower() == "all":
        return FORMATS
    chosen = [_ALIASES.get(name.strip().upper(), name.strip().upper()) for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown or not chosen:
        raise ValueError(f"{', '.join(unknown) or 'no format'}: choose among {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(chosen))


class ImageError(ValueError):
    """A bad input image. `status` is the HTTP status it maps to, `reason` a short metric label."""

    def __init__(self, message: str, status: int = 400, reason: str = "not_an_image") -> None:
        # one line: a decoder's own words (libheif's end in a newline) go into logs and CSV rows
        super().__init__(" ".join(message.split()))
        self.status = status
        self.reason = reason


def decode_image(data: bytes, max_bytes: int, max_pixels: int, formats: Sequence[str] = FORMATS) -> Image.Image:
    """Decode `data` into an RGB image with EXIF orientation applied; only `formats` (Pillow's names) are tried."""
    if not data:
        raise ImageError("empty upload: no image bytes received", 400, "empty")
    if len(data) > max_bytes:
        raise ImageError(f"upload is {len(data)} bytes; the limit is {max_bytes}", 413, "too_many_bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"not an image in a supported format: {format_names(formats)} ({exc.__class__.__name__})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", 413, "too_many_pixels")
    if width < 1 or height < 1:
        raise ImageError("image has no pixels", 400, "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, EOFError) as exc:
        raise ImageError(f"image data is truncated or corrupt ({exc})", 400, "corrupt") from exc


def require_content(image: Image.Image) -> Image.Image:
    """`image`, unless it is one flat colour: a blank picture has no face, and the whole-image guess the
    classifier would give it (a 1x1 PNG, a grey placeholder) is a confident answer about nothing."""
    if all(high - low <= BLANK_LEVELS for low, high in image.getextrema()):
        raise ImageError(f"the image is one flat colour ({image.width}x{image.height}, every pixel within {BLANK_LEVELS} levels "
                         "of the others): there is no face or picture to judge", 422, "blank")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode Pillow decodes: palette, grayscale, alpha, CMYK and 16-bit included."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        top = max(float(array.max()), 1.0)
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image_file(path: str, max_bytes: int, max_pixels: int) -> Image.Image:
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return decode_image(data, max_bytes, max_pixels)
