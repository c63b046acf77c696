"""Blended fakes made from real crops: a region of a changed copy of a face pasted back over it.

Self-blended images (Shiohara and Yamasaki, CVPR 2022) and Face X-ray (Li et al., CVPR 2020) teach a
detector the traces every composite leaves, whatever made it: a seam where the pasted region meets the
photo, and a colour, sharpness or position that does not quite match around it. rff's photoshop edits
and face swaps are such composites. A real crop becomes a fake by pasting a region of a changed copy of
it back through a soft, irregular mask of the whole face or of some of its parts (eyes, nose, mouth),
where rff's editors worked. Only the face itself is pasted: blending in another person's face, as Face
X-ray does, gave ghosted, misaligned composites far cruder than rff's edits (MTCNN crops of different
people differ in pose and framing), and SBI found self-blending the better teacher.

Crops are MTCNN face crops with a margin (service.preprocess.square_box), so the face box sits in the
middle of the crop and the parts sit near the same place in every crop; the regions are drawn around
those places with jitter, in the face box's own coordinates.
"""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.augment import jitter_lighting

# centre (x, y) and radii (rx, ry) of each region, as fractions of the MTCNN face box
FACE = ((0.50, 0.55), (0.38, 0.50))
PARTS = {
    "eyes": ((0.50, 0.40), (0.38, 0.14)),
    "left eye": ((0.31, 0.40), (0.15, 0.10)),
    "right eye": ((0.69, 0.40), (0.15, 0.10)),
    "nose": ((0.50, 0.58), (0.13, 0.17)),
    "mouth": ((0.50, 0.79), (0.22, 0.10)),
}


def self_blend(crop: np.ndarray, margin: float, rng: random.Random) -> np.ndarray:
    """`crop` (HxWx3 uint8, an MTCNN crop with this margin) with a region of a changed copy of itself blended in."""
    image = Image.fromarray(crop)
    source = _changed(image, rng)
    mask = _region_mask(image.size[0], margin, rng)
    blended = mask * np.asarray(source, np.float32) + (1 - mask) * np.asarray(image, np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _changed(image: Image.Image, rng: random.Random) -> Image.Image:
    """A slightly moved, rescaled, recoloured and re-sharpened copy: what makes the pasted region not match."""
    side = image.size[0]
    scale = rng.uniform(0.94, 1.06)
    dx, dy = (rng.uniform(-0.03, 0.03) * side for _ in range(2))
    centre = side / 2
    image = image.transform(image.size, Image.Transform.AFFINE,
                            (1 / scale, 0, centre - centre / scale + dx, 0, 1 / scale, centre - centre / scale + dy),
                            resample=Image.Resampling.BICUBIC)
    image = jitter_lighting(image, 0.1, rng)
    shift = np.array([rng.uniform(-12, 12) for _ in range(3)], np.float32)
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + shift, 0, 255).astype(np.uint8))
    texture = rng.random()
    if texture < 1 / 3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * side / 224))
    elif texture < 2 / 3:
        image = image.filter(ImageFilter.UnsharpMask(radius=2, percent=rng.randint(50, 150), threshold=0))
    return image


def _region_mask(side: int, margin: float, rng: random.Random) -> np.ndarray:
    """A soft mask (side x side x 1, 0-1) of the whole face or of one to three parts, irregular and feathered."""
    regions = [FACE] if rng.random() < 0.4 else rng.sample(list(PARTS.values()), rng.randint(1, 3))
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    box_side = side / (1 + margin)
    offset = (side - box_side) / 2
    for (cx, cy), (rx, ry) in regions:
        size = rng.uniform(0.8, 1.2)
        cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
        points = []
        for k in range(24):
            angle = 2 * math.pi * k / 24
            wobble = size * rng.uniform(0.88, 1.12)
            points.append((offset + box_side * (cx + rx * wobble * math.cos(angle)), offset + box_side * (cy + ry * wobble * math.sin(angle))))
        draw.polygon(points, fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.01, 0.08) * side))
    strength = 1.0 if rng.random() < 0.5 else rng.uniform(0.5, 1.0)
    return (np.asarray(canvas, np.float32) / 255.0 * strength)[..., None]
