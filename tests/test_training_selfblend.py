"""Blended fakes from real crops: the face changes, the frame around it does not, and a seed repeats a blend."""
from __future__ import annotations

import random

import numpy as np
import pytest

from training.selfblend import self_blend


def _crop(side: int = 128) -> np.ndarray:
    """A textured stand-in for a face crop: smooth gradients with noise, so a blend shows as a change."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:side, 0:side]
    base = np.stack([xs, ys, (xs + ys) / 2], axis=2) * (200 / side) + 20
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_a_blend_changes_the_face_and_keeps_the_crops_corners(seed: int) -> None:
    crop = _crop()
    blended = self_blend(crop, 0.3, random.Random(seed))
    assert blended.shape == crop.shape and blended.dtype == np.uint8
    change = np.abs(blended.astype(int) - crop.astype(int)).max(axis=2)
    assert change[32:96, 32:96].max() > 10  # some part of the face box moved, recoloured or re-sharpened
    for corner in (change[:10, :10], change[:10, -10:], change[-10:, :10]):
        assert corner.max() <= 1  # outside the face, only rounding


def test_the_same_seed_gives_the_same_blend_and_another_seed_another() -> None:
    crop = _crop(96)
    first, again = (self_blend(crop, 0.3, random.Random(7)) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, self_blend(crop, 0.3, random.Random(8)))
