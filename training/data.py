"""Folder datasets (`<root>/real/**`, `<root>/fake/**`) and their seeded, stratified splits."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".avif", ".heic", ".heif"}
LABELS = {"real": 0, "fake": 1}
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset folder that cannot be used, with a message that says why."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    dataset: str

    @property
    def key(self) -> str:
        """Stable id inside its dataset: `real/x.jpg`."""
        return f"{'fake' if self.label else 'real'}/{self._relative()}"

    def _relative(self) -> str:
        parts = self.path.parts
        index = max(i for i, part in enumerate(parts) if part in LABELS)
        return "/".join(parts[index + 1:])


class Labelled:
    """The labels and dataset names of a sequence of samples in order (predictions, crop sets)."""

    samples: list[Sample]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def datasets(self) -> list[str]:
        return [s.dataset for s in self.samples]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def scan_dataset(root: Path) -> list[Sample]:
    """Every image under root/real and root/fake; one of the two may be absent, not both."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    present = [name for name in LABELS if (root / name).is_dir()]
    if not present:
        raise DatasetError(f"{root} has neither a real/ nor a fake/ subfolder")
    samples = []
    for name in present:
        images = list_images(root / name)
        if not images:
            raise DatasetError(f"{root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        samples += [Sample(path, LABELS[name], root.name) for path in images]
    return samples


class Split(BaseModel):
    """Which file of each dataset went where. Written beside a run and an export; reused by evaluation."""

    seed: int
    fractions: tuple[float, float, float]
    datasets: dict[str, dict[str, list[str]]]  # dataset -> split -> sample keys

    def sizes(self) -> dict[str, dict[str, int]]:
        return {name: {split: len(keys) for split, keys in parts.items()} for name, parts in self.datasets.items()}

    def select(self, samples: list[Sample], split: str) -> list[Sample]:
        chosen = {(name, key) for name, parts in self.datasets.items() for key in parts[split]}
        return [s for s in samples if (s.dataset, s.key) in chosen]

    def extended(self, samples: list[Sample], seed: int) -> tuple["Split", list[str]]:
        """This split with every dataset it lacks split afresh (`make_split`, this seed), and those datasets' names.
        The datasets it has keep their parts, file for file."""
        new = sorted({s.dataset for s in samples} - set(self.datasets))
        if not new:
            return self, []
        added = make_split([s for s in samples if s.dataset in new], seed=seed, fractions=self.fractions)
        return self.model_copy(update={"datasets": {**self.datasets, **added.datasets}}), new

    def missing(self, samples: list[Sample]) -> list[str]:
        """The datasets this split records of which no sample was given: a run on it leaves them out."""
        return sorted(set(self.datasets) - {s.dataset for s in samples})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> "Split":
        return cls.model_validate(json.loads(Path(path).read_text()))


def split_group(sample: Sample) -> str:
    """What must stay on one side of a split. In an LFW-style set (name starting with `lfw`) that is a
    person, the file name before its last `_` (`Aaron_Peirsol_0003.jpg` -> `Aaron_Peirsol`), so no face
    is seen in training and again in test; elsewhere every file is its own group."""
    if sample.dataset.lower().startswith("lfw"):
        folder, _, name = sample.key.rpartition("/")
        return f"{folder}/{name.rsplit('_', 1)[0]}"
    return sample.key


def make_split(samples: list[Sample], seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Split:
    """Stratified by dataset and label, never splitting a group (`split_group`); the same files and seed
    give the same split, and a set of one file per group is split exactly as file by file."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must add up to 1, got {fractions}")
    datasets: dict[str, dict[str, list[str]]] = {}
    strata: dict[tuple[str, int], dict[str, list[str]]] = {}
    for sample in samples:
        strata.setdefault((sample.dataset, sample.label), {}).setdefault(split_group(sample), []).append(sample.key)
    for (name, label), groups in sorted(strata.items()):
        order = sorted(groups)
        random.Random(f"{seed}-{name}-{label}").shuffle(order)
        parts = datasets.setdefault(name, {split: [] for split in SPLITS})
        total, placed = sum(len(keys) for keys in groups.values()), 0
        train_end = round(total * fractions[0])
        val_end = train_end + round(total * fractions[1])
        for group in order:  # each group goes where its first file would fall in a file-by-file split
            part = "train" if placed < train_end else "val" if placed < val_end else "test"
            parts[part] += sorted(groups[group])
            placed += len(groups[group])
    return Split(seed=seed, fractions=fractions, datasets=datasets)
