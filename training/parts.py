"""Which parts of a face were replaced, where a file name says so: rff's `<level>_<n>_<code>.jpg`.

rff's photoshop fakes carry a four-digit code, one digit per part pasted from another face: left eye, right
eye, nose, mouth (`mid_12_1100.jpg`: both eyes). `--part-loss` in training.train asks an auxiliary head
to name those parts, so the network is told where an edit is and not only that there is one. The two eyes
are one target: a horizontal flip (augmentation) swaps them. Real photos replaced nothing; fakes without
a code (StyleGAN2, Stable Diffusion, blends) are left out of the part loss.
"""
from __future__ import annotations

import re

import numpy as np

from training.data import Sample

PARTS = ("eyes", "nose", "mouth")
PART_CODE = re.compile(r"^(?:easy|mid|hard)_\d+_([01]{4})$")


def part_code(sample: Sample) -> tuple[int, int, int] | None:
    """(eyes, nose, mouth) replaced, 1 or 0: all 0 for a real photo; None for a fake whose name has no code."""
    if sample.label == 0:
        return (0, 0, 0)
    match = PART_CODE.match(sample.path.stem)
    if match is None:
        return None
    left_eye, right_eye, nose, mouth = (int(digit) for digit in match.group(1))
    return (max(left_eye, right_eye), nose, mouth)


def part_targets(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the (eyes, nose, mouth) targets as float32 (N, 3), and whether they are known (N,)."""
    codes = [part_code(s) for s in samples]
    known = np.array([c is not None for c in codes], dtype=bool)
    targets = np.array([c or (0, 0, 0) for c in codes], dtype=np.float32).reshape(len(samples), len(PARTS))
    return targets, known
