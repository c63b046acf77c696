"""Training-time augmentation of face crops: a tighter framing, flips, rotation, lighting, a colour cast, black and white, shuffled tiles, an erased rectangle, a beauty filter, blur or sharpening, resize, noise and JPEG re-encoding.

A tighter framing (a profile picture's crop, a photo cut close to the face) shows in a crop as more of
its square falling outside the photo: black bands with black edges, a smaller square enlarged with
fitted ones (service/preprocess.py). Drawn for fakes and reals alike, it keeps how a set's photos
were framed from being a cue.

Blur, sharpening, random resizing and JPEG re-encoding keep a detector from learning a dataset's
sharpness, resolution or compression instead of the face (the sets here differ in all three). They run
in the order a photo meets them on its way to a user: blurred or sharpened (as cameras and photo apps
do), scaled down, noisy at that size (a small phone photo in dim light), saved as JPEG at that size,
scaled back up for viewing.

`augment_pair` gives two views of one crop for consistency training (training/train.py, --consistency):
the same flip, rotation and lighting, then the usual random degradation for the first view and a certain
one (always scaled and re-saved, blurred at the usual rate) for the second, so that the network can be
taught to say the same of a photo however it was prepared.
"""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from pydantic import BaseModel, Field

from service.preprocess import RESAMPLE, Edges, rotate
from training.chains import monochrome, noisy, recoloured, roundtrip, smoothed

TINT = 0.2  # the strongest colour cast a tint draws: red and blue 20% apart each way


class AugmentSpec(BaseModel):
    frame: float = Field(0.0, ge=0, le=1, description="probability of a tighter framing, as the crop shows it: black bands on 1-4 sides, each 5-35% of the side (edges black), or a random square of frame_min-100% of the side enlarged (edges fit); fakes and reals alike, so that how tightly a set's photos were framed cannot mean real or fake")
    frame_min: float = Field(0.6, ge=0.2, le=1, description="smallest side of a tighter framing's square, as a share of the crop's side (edges fit; 0.4: the face fills the photo, as in a close-up portrait)")
    edges: Edges = Field("black", description="the crops' edges (PreprocessSpec.edges), which decide how a tighter framing shows")
    flip: float = Field(0.5, ge=0, le=1)
    rotation: float = Field(15.0, ge=0, le=180, description="rotation range in degrees, uniform in [-r, r]")
    lighting: float = Field(0.2, ge=0, le=1, description="brightness/contrast/saturation jitter")
    tint: float = Field(0.0, ge=0, le=1, description=f"probability of a colour cast: red up and blue down, or the other way, by up to {TINT:.0%} (training.chains' warm filter, warm or cool), fakes and reals alike, as white balance and photo apps' filters give, so that a set's colour balance cannot mean real or fake")
    gray: float = Field(0.0, ge=0, le=1, description="probability of black and white (luma in three channels), fakes and reals alike, so that colour alone cannot mean fake")
    smooth: float = Field(0.0, ge=0, le=1, description="probability of a beauty filter (bilateral smoothing, colour range 15-60 of 255, spatial 1.5-4.5 px), fakes and reals alike, as phone cameras and photo apps apply")
    blur: float = Field(0.2, ge=0, le=1, description="probability of a Gaussian blur, sigma 0.1-1.5")
    sharpen: float = Field(0.0, ge=0, le=1, description="probability of an unsharp mask (radius 0.5-4 px, 50-250%) where no blur was drawn (blur + sharpen at most 1)")
    resize: float = Field(0.5, ge=0, le=1, description="probability of a down-and-up resize")
    min_scale: float = Field(0.3, gt=0, le=1, description="smallest resize scale; scales are log-uniform in [min_scale, 1]")
    noise: float = Field(0.0, ge=0, le=1, description="probability of Gaussian noise, standard deviation 2-12 of 255, at the reduced size when resized, fakes and reals alike, as a phone leaves in dim light")
    jpeg: float = Field(0.5, ge=0, le=1, description="probability of JPEG re-encoding, quality 50-95 (at the reduced size when resized)")
    erase: float = Field(0.0, ge=0, le=1, description="probability of one rectangle (2-25% of the crop, aspect 0.3-3.3) filled with the crop's mean colour before any degradation (random erasing), fakes and reals alike, so that no single region is needed to decide")
    shuffle: float = Field(0.0, ge=0, le=1, description="probability of cutting the crop into a 4x4 grid of tiles put back in a random order before any degradation, fakes and reals alike, so that only each tile's texture can decide")


# what a training command sets, each as --name (flip, lighting and edges come from elsewhere)
AUGMENT_OPTIONS = ("rotation", "frame", "frame_min", "blur", "tint", "gray", "smooth", "noise", "sharpen", "resize", "min_scale", "jpeg",
                   "erase", "shuffle")


def augment(crop: np.ndarray, spec: AugmentSpec, rng: random.Random) -> np.ndarray:
    return np.asarray(_random_degradation(_appearance(Image.fromarray(crop), spec, rng), spec, rng))


def augment_pair(crop: np.ndarray, spec: AugmentSpec, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Two views of one face: one augmented as `augment` does, one with the same appearance certainly degraded."""
    image = _appearance(Image.fromarray(crop), spec, rng)
    certain = spec.model_copy(update={"resize": 1.0, "jpeg": 1.0})
    return np.asarray(_random_degradation(image, spec, rng)), np.asarray(_random_degradation(image, certain, rng))


def _appearance(image: Image.Image, spec: AugmentSpec, rng: random.Random) -> Image.Image:
    """Framing, flip, rotation, lighting and colour: what changes a photo's look but not its detail."""
    # drawn only when asked for, so that recipes recorded without it draw the same crops
    if spec.frame and rng.random() < spec.frame:
        image = reframed(image, spec.edges, rng, spec.frame_min)
    if rng.random() < spec.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if spec.rotation:
        image = rotate(image, rng.uniform(-spec.rotation, spec.rotation))
    if spec.lighting:
        image = jitter_lighting(image, spec.lighting, rng)
    # each drawn only when asked for, so that recipes recorded without it draw the same crops
    if spec.tint and rng.random() < spec.tint:
        image = recoloured(image, "warm", rng.uniform(-TINT, TINT))
    if spec.gray and rng.random() < spec.gray:
        image = monochrome(image)
    if spec.shuffle and rng.random() < spec.shuffle:
        image = shuffled(image, rng)
    return erased(image, rng) if spec.erase and rng.random() < spec.erase else image


def shuffled(image: Image.Image, rng: random.Random, grid: int = 4) -> Image.Image:
    """`image` cut into grid x grid tiles put back in a random order, so that only what each tile shows can
    decide: the face's shape and a set's overall look are gone, a generator's texture stays."""
    pixels = np.array(image)
    side_h, side_w = pixels.shape[0] // grid, pixels.shape[1] // grid
    tiles = [pixels[r * side_h:(r + 1) * side_h, c * side_w:(c + 1) * side_w].copy() for r in range(grid) for c in range(grid)]
    rng.shuffle(tiles)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, grid)
        pixels[r * side_h:(r + 1) * side_h, c * side_w:(c + 1) * side_w] = tile
    return Image.fromarray(pixels)


def erased(image: Image.Image, rng: random.Random) -> Image.Image:
    """`image` with one random rectangle filled with its mean colour (random erasing, Zhong et al. 2020), so that
    no single region, an eye or a GAN's tell-tale patch, is needed to decide."""
    width, height = image.size
    area = rng.uniform(0.02, 0.25) * width * height
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
    box_w = max(1, min(width, round(math.sqrt(area * aspect))))
    box_h = max(1, min(height, round(math.sqrt(area / aspect))))
    left, top = rng.randint(0, width - box_w), rng.randint(0, height - box_h)
    pixels = np.array(image)
    pixels[top:top + box_h, left:left + box_w] = pixels.reshape(-1, pixels.shape[-1]).mean(axis=0).round().astype(np.uint8)
    return Image.fromarray(pixels)


def reframed(crop: Image.Image, edges: Edges, rng: random.Random, smallest: float) -> Image.Image:
    """`crop` as it would be had its photo been framed more tightly around the face."""
    width, height = crop.size
    if edges == "fit":
        side = round(min(width, height) * rng.uniform(smallest, 1.0))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
        return crop.crop((left, top, left + side, top + side)).resize(crop.size, rng.choice(list(RESAMPLE.values())))
    cut = [rng.random() < 0.5 for _ in range(4)]
    cut[rng.randrange(4)] = True
    pixels = np.array(crop)
    left, top, right, bottom = (round(rng.uniform(0.05, 0.35) * size) if c else 0 for c, size in zip(cut, (width, height, width, height)))
    pixels[:top], pixels[height - bottom:], pixels[:, :left], pixels[:, width - right:] = 0, 0, 0, 0
    return Image.fromarray(pixels)


def jitter_lighting(image: Image.Image, amount: float, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor drawn from [1 - amount, 1 + amount]."""
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(1 - amount, 1 + amount))
    return image


def _random_degradation(image: Image.Image, spec: AugmentSpec, rng: random.Random) -> Image.Image:
    """A beauty filter, blur or sharpen, then scale down, add noise, save as JPEG and scale up, each drawn at its spec's rate."""
    # drawn only when asked for, so that recipes recorded without it draw the same crops
    if spec.smooth and rng.random() < spec.smooth:
        image = smoothed(image, rng.uniform(15.0, 60.0), rng.uniform(1.5, 4.5))
    texture = rng.random()
    if texture < spec.blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 1.5)))
    elif texture < spec.blur + spec.sharpen:
        image = image.filter(ImageFilter.UnsharpMask(radius=rng.uniform(0.5, 4.0), percent=rng.randint(50, 250), threshold=rng.randint(0, 3)))
    scale = math.exp(rng.uniform(math.log(spec.min_scale), 0.0)) if rng.random() < spec.resize else 1.0
    quality = rng.randint(50, 95) if rng.random() < spec.jpeg else None
    # drawn only when asked for, so that recipes recorded without it draw the same crops
    sigma = rng.uniform(2.0, 12.0) if spec.noise and rng.random() < spec.noise else 0.0
    return _degrade(image, scale, quality, rng, sigma)


def _degrade(image: Image.Image, scale: float, quality: int | None, rng: random.Random, sigma: float = 0.0) -> Image.Image:
    """Scale down, add noise, save as JPEG at that size, scale back up: each step only where asked."""
    size = image.size
    filters = list(RESAMPLE.values())
    if scale < 1.0:
        image = image.resize((max(8, round(size[0] * scale)), max(8, round(size[1] * scale))), rng.choice(filters))
    if sigma:
        image = noisy(image, sigma, np.random.default_rng(rng.getrandbits(32)))
    if quality is not None:
        image = roundtrip(image, quality)
    return image if image.size == size else image.resize(size, rng.choice(filters))


