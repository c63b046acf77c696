"""Re-processing chains: what happens to a photo on its way to a user (scaled, re-saved, blurred).

A model that judges faces and not a dataset's preparation scores about the same on a test photo and
on the same photo after any of these. Chains are written as steps joined by `>`, applied left to right:

    x0.5          scale by 0.5 (bicubic)
    256px         resize the longer side to 256 px (bicubic), keeping the aspect ratio
    jpeg75        save as JPEG at quality 75 and decode again
    blur1         Gaussian blur, radius 1 px
    sharpen100    unsharp mask, radius 2 px, strength 100% (what phone cameras and photo apps add)
    webp75        save as WebP at quality 75 and decode again (how many sites serve photos)
    avif60        save as AVIF at quality 60 and decode again (as more and more sites do)
    gray          black and white (luma), kept as three channels, as a monochrome portrait is
    noise8        Gaussian noise of standard deviation 8 (of 255) per pixel and channel, as a phone's
                  sensor leaves in dim light; the same noise for photos of one size, so a run repeats
    smooth40      a beauty filter: edge-preserving (bilateral) smoothing that flattens skin and keeps
                  edges, colour range 40 (of 255), spatial range a hundredth of the longer side
    crop0.7       framed tighter: the centre 0.7 of each side kept, as a profile picture or a photo
                  app's crop leaves a face filling more of the photo
    vivid140      a photo app's "vivid" filter: saturation 140%, contrast half as far (120%)
    warm15        a warm filter: red 15% stronger and blue 15% weaker, as a sunset or an app's tint
    gamma150      gamma 1.5: mid-tones darker, as an underexposed photo (gamma67 lightens them)
    pad25         posted on a white canvas: 25% of the longer side added on every side, as apps that fit a
                  photo into a square post do (padblack25: a black one; pad3 is a thin white frame)
    circle        a round profile picture: the centre square, outside its inscribed circle white (where a
                  transparent avatar's corners are, once the service lays it on white)
    rot90         turned a quarter counter-clockwise with no EXIF orientation to undo it, as a photo whose
                  metadata was stripped before it was turned upright (rot180, rot270)

    "x0.5>x2"     down to half the size and back up, as a thumbnail that is viewed enlarged
    "256px>jpeg90" the size and quality of an FFHQ photo downscaled from 1024 px and saved at quality 90
                   (not its detail, where the photo was smaller than 256 px to begin with)
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, features

from service.preprocess import RESAMPLE

_STEP = re.compile(r"^(?:x(?P<scale>\d+(?:\.\d+)?)|(?P<side>\d+)px|jpeg(?P<quality>\d+)|webp(?P<webp>\d+)|avif(?P<avif>\d+)"
                   r"|blur(?P<radius>\d+(?:\.\d+)?)|sharpen(?P<sharpen>\d+)|(?P<gray>gray)|noise(?P<noise>\d+(?:\.\d+)?)|smooth(?P<smooth>\d+)"
                   r"|crop(?P<crop>0?\.\d+)|vivid(?P<vivid>\d+)|warm(?P<warm>\d+)|gamma(?P<gamma>\d+)|pad(?P<pad>\d+)|padblack(?P<padblack>\d+)|(?P<circle>circle)|rot(?P<rot>90|180|270))$")


class ChainError(ValueError):
    """A chain that cannot be parsed, with the step that failed."""


def roundtrip(image: Image.Image, quality: int, format: str = "JPEG") -> Image.Image:
    """`image` saved in a lossy format (JPEG, WebP or AVIF) at this quality and decoded again."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=format, quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _resized(image: Image.Image, factor: float) -> Image.Image:
    size = (max(8, round(image.width * factor)), max(8, round(image.height * factor)))
    return image.convert("RGB").resize(size, RESAMPLE["bicubic"])


def monochrome(image: Image.Image) -> Image.Image:
    """Black and white: the luma, in three equal channels."""
    return image.convert("L").convert("RGB")


def noisy(image: Image.Image, sigma: float, rng: np.random.Generator | None = None) -> Image.Image:
    """Gaussian noise of standard deviation `sigma` (of 255) per pixel and channel; without `rng`, the same
    noise every time for photos of one size."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noise = (rng or np.random.default_rng(0)).normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


def centre_crop(image: Image.Image, fraction: float) -> Image.Image:
    """The centre `fraction` of each side."""
    width, height = max(1, round(image.width * fraction)), max(1, round(image.height * fraction))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.convert("RGB").crop((left, top, left + width, top + height))


def on_canvas(image: Image.Image, fraction: float, colour: str) -> Image.Image:
    """The photo centred on a canvas of one colour, `fraction` of its longer side wider on every side."""
    image = image.convert("RGB")
    border = round(max(image.size) * fraction)
    canvas = Image.new("RGB", (image.width + 2 * border, image.height + 2 * border), colour)
    canvas.paste(image, (border, border))
    return canvas


def avatar(image: Image.Image) -> Image.Image:
    """The photo's centre square, white outside the circle inscribed in it."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    mask = Image.new("L", square.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, side - 1, side - 1), fill=255)
    out = Image.new("RGB", square.size, "white")
    out.paste(square, (0, 0), mask)
    return out


def smoothed(image: Image.Image, colour: float, space: float | None = None) -> Image.Image:
    """A beauty filter: OpenCV's bilateral filter, which averages neighbours of similar colour only, so skin
    flattens and edges stay. `colour` and `space` are its two ranges, in levels of 255 and in pixels
    (default: a hundredth of the longer side, at least 1)."""
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    space = space if space is not None else max(1.0, max(image.size) / 100.0)
    return Image.fromarray(cv2.bilateralFilter(pixels, 0, float(colour), float(space)))


def recoloured(image: Image.Image, kind: str, amount: float) -> Image.Image:
    """A colour filter: "vivid" (saturation x amount, contrast half as far), "warm" (red x 1 + amount, blue x
    1 - amount) or "gamma" (each level to the power `amount`)."""
    image = image.convert("RGB")
    if kind == "vivid":
        return ImageEnhance.Contrast(ImageEnhance.Color(image).enhance(amount)).enhance(1 + (amount - 1) / 2)
    pixels = np.asarray(image, dtype=np.float32) / 255
    if kind == "warm":
        pixels = pixels * np.array([1 + amount, 1.0, 1 - amount], dtype=np.float32)
    else:
        pixels = pixels ** amount
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))


@dataclass(frozen=True)
class Step:
    kind: str  # scale, side, jpeg, webp, avif, blur, sharpen, gray, noise, smooth, crop, vivid, warm, gamma, pad, padblack, circle, rot
    value: float

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.kind == "scale":
            return _resized(image, self.value)
        if self.kind == "side":
            return _resized(image, self.value / max(image.size))
        if self.kind in ("jpeg", "webp", "avif"):
            return roundtrip(image, int(self.value), self.kind.upper())
        if self.kind == "sharpen":
            return image.convert("RGB").filter(ImageFilter.UnsharpMask(radius=2, percent=int(self.value), threshold=0))
        if self.kind == "gray":
            return monochrome(image)
        if self.kind == "noise":
            return noisy(image, self.value)
        if self.kind == "smooth":
            return smoothed(image, self.value)
        if self.kind == "crop":
            return centre_crop(image, self.value)
        if self.kind == "circle":
            return avatar(image)
        if self.kind == "rot":
            return image.convert("RGB").rotate(self.value, expand=True)
        if self.kind in ("pad", "padblack"):
            return on_canvas(image, self.value / 100, "white" if self.kind == "pad" else "black")
        if self.kind in ("vivid", "warm", "gamma"):
            return recoloured(image, self.kind, self.value / 100)
        return image.convert("RGB").filter(ImageFilter.GaussianBlur(self.value))


@dataclass(frozen=True)
class Chain:
    name: str
    steps: tuple[Step, ...]

    def __call__(self, image: Image.Image) -> Image.Image:
        for step in self.steps:
            image = step(image)
        return image


def chain_names(text: str) -> list[str]:
    """A command line's ';'-separated chains, each left to parse_chain."""
    return [c.strip() for c in text.split(";") if c.strip()]


def parse_chain(text: str) -> Chain:
    steps = []
    for part in text.strip().split(">"):
        match = _STEP.match(part.strip())
        if not match:
            raise ChainError(f"unknown step {part.strip()!r} in chain {text!r}: use x<scale>, <side>px, jpeg<quality>, webp<quality>, avif<quality>, "
                             "blur<radius>, sharpen<percent>, gray, noise<sigma>, smooth<colour range>, crop<fraction>, vivid<percent>, "
                             "warm<percent>, gamma<percent>, pad<percent>, padblack<percent>, circle or rot<90|180|270>")
        kind, value = next((k, 0.0 if k in ("gray", "circle") else float(v)) for k, v in match.groupdict().items() if v is not None)
        if (kind in ("quality", "webp", "avif") and not 1 <= value <= 100) or (kind == "sharpen" and not 1 <= value <= 500) \
                or (kind in ("scale", "side", "radius") and value <= 0) or (kind == "scale" and value > 8) \
                or (kind == "noise" and not 0 < value <= 64) or (kind == "smooth" and not 1 <= value <= 255) \
                or (kind == "crop" and not 0.1 <= value < 1) or (kind == "vivid" and not 10 <= value <= 300) \
                or (kind == "warm" and not 1 <= value <= 50) or (kind == "gamma" and not 25 <= value <= 400) \
                or (kind in ("pad", "padblack") and not 1 <= value <= 100):
            raise ChainError(f"step {part.strip()!r} in chain {text!r} is out of range")
        steps.append(Step({"quality": "jpeg", "radius": "blur"}.get(kind, kind), value))
    return Chain(text.strip(), tuple(steps))


def reencode_chain(side: int, quality: int) -> Chain:
    """One size and JPEG quality for every photo."""
    return parse_chain(f"{side}px>jpeg{quality}")


# The chains of the robustness table, in the order it prints them.
ROBUSTNESS_CHAINS: tuple[str, ...] = (
    "x0.5", "x0.5>x2", "x2", "x4", "256px>jpeg90", "512px>jpeg90", "jpeg60", "jpeg75", "jpeg95", "webp75",
    *(("avif60",) if features.check("avif") else ()),  # where Pillow was built with libavif, as its wheels are
    "blur1", "sharpen100", "gray", "noise8", "smooth40", "crop0.7", "vivid140", "warm15", "gamma150",
)
