"""A small set of noise images with real/ and fake/, and its split, for the commands that make a set of their own from a
set's real training photos (training.dcgan, training.reconstruct)."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from training.cache import CropCache
from training.data import make_split, scan_dataset


def noise_set(root: Path, count: int = 12, labels: tuple[str, ...] = ("real", "fake")) -> Path:
    rng = np.random.default_rng(0)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(root / label / f"{label}{i:02d}.png")
    return root


def set_and_split(tmp_path: Path, monkeypatch, command: ModuleType, labels: tuple[str, ...] = ("real", "fake")) -> tuple[Path, Path]:
    """A noise set and its split file, with `command`'s crop cache kept under tmp_path."""
    monkeypatch.setattr(command, "CropCache", partial(CropCache, tmp_path / "cache"))
    data = noise_set(tmp_path / "faces", labels=labels)
    split = tmp_path / "split.json"
    make_split(scan_dataset(data), seed=0).save(split)
    return data, split
