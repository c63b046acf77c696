"""The face-crop cache: detection runs once per decoded image, cropping once per spec, bad files are reported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service.faces import Face
from service.preprocess import PreprocessSpec
from training import cache
from training.cache import CropCache
from training.data import Sample, scan_dataset

SPEC = PreprocessSpec(input_size=32, margin=0.3)


class CountingDetector:
    """Stands in for MTCNN: one fixed face per image, and a count of how often it was asked."""

    calls = 0

    def __init__(self, *args, **kwargs) -> None:
        pass

    def detect(self, image: Image.Image) -> list[Face]:
        type(self).calls += 1
        return [Face((8.0, 8.0, 40.0, 40.0), 0.99)]


@pytest.fixture
def detector(monkeypatch):
    CountingDetector.calls = 0
    monkeypatch.setattr(cache, "FaceDetector", CountingDetector)
    monkeypatch.setattr(cache, "_DETECTORS", {})
    return CountingDetector


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("real", "fake"):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "data"


def test_second_call_reads_the_cache_without_detecting(detector, dataset: Path, tmp_path: Path, monkeypatch) -> None:
    samples = scan_dataset(dataset)
    root = tmp_path / "cache"
    first = CropCache(root).crop_set(samples, SPEC, workers=1)
    assert detector.calls == len(samples) == 6
    assert first.crops.shape == (6, 32, 32, 3) and first.face_found.all()
    assert len(list((root / "faces").rglob("*.json"))) == 6
    assert len(list((root / "crops").rglob("*.png"))) == 6

    monkeypatch.setattr(cache, "_DETECTORS", {})  # a fresh process: nothing in memory, only the files
    second = CropCache(root).crop_set(samples, SPEC, workers=1)
    assert detector.calls == 6
    np.testing.assert_array_equal(second.crops, first.crops)
    assert second.face_found.all()


def test_new_crop_spec_reuses_the_detections(detector, dataset: Path, tmp_path: Path) -> None:
    samples = scan_dataset(dataset)
    root = tmp_path / "cache"
    tight = CropCache(root).crop_set(samples, SPEC, workers=1)
    wide = CropCache(root).crop_set(samples, SPEC.model_copy(update={"margin": 1.0}), workers=1)
    assert detector.calls == 6
    assert not np.array_equal(tight.crops, wide.crops)
    assert len(list((root / "crops").rglob("*.png"))) == 12


def test_detections_are_keyed_by_pixels_not_file_bytes(detector, dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    CropCache(root).crop_set(scan_dataset(dataset), SPEC, workers=1)
    copy = tmp_path / "copy" / "real"
    copy.mkdir(parents=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "same pixels, other bytes")
    Image.open(dataset / "real" / "0.png").save(copy / "0.png", pnginfo=info)
    assert (copy / "0.png").read_bytes() != (dataset / "real" / "0.png").read_bytes()
    again = CropCache(root).crop_set(scan_dataset(tmp_path / "copy"), SPEC, workers=1)
    assert detector.calls == 6
    assert again.face_found.all()


def test_unreadable_files_are_skipped_and_reported(detector, dataset: Path, tmp_path: Path) -> None:
    (dataset / "fake" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (dataset / "real" / "empty.png").write_bytes(b"")
    samples = scan_dataset(dataset)
    crops = CropCache(tmp_path / "cache").crop_set(samples, SPEC, workers=1)
    assert len(crops.samples) == 6 and len(crops.crops) == 6
    reported = {s.path.name: message for s, message in crops.unreadable}
    assert set(reported) == {"broken.jpg", "empty.png"}
    assert "empty" in reported["empty.png"]
    assert list(crops.labels) == [s.label for s in crops.samples]


def test_whole_image_mode_never_detects(detector, dataset: Path, tmp_path: Path) -> None:
    whole = SPEC.model_copy(update={"crop_mode": "whole"})
    crops = CropCache(tmp_path / "cache").crop_set(scan_dataset(dataset), whole, workers=1)
    assert detector.calls == 0
    assert not crops.face_found.any()
    expected = np.asarray(Image.open(dataset / "fake" / "0.png").resize((32, 32), Image.Resampling.BICUBIC))
    first_fake = next(i for i, s in enumerate(crops.samples) if s.key == "fake/0.png")
    np.testing.assert_array_equal(crops.crops[first_fake], expected)


def _crop_set(groups: dict[tuple[str, int], int]) -> cache.CropSet:
    samples = [Sample(Path(f"/{name}/{'fake' if label else 'real'}/{i}.jpg"), label, name)
               for (name, label), count in groups.items() for i in range(count)]
    return cache.CropSet(samples, np.zeros((len(samples), 4, 4, 3), np.uint8), np.ones(len(samples), bool))


def _share_per_set(crop_set: cache.CropSet, weights: np.ndarray) -> dict[str, float]:
    names = np.array(crop_set.datasets)
    return {name: round(float(weights[names == name].sum() / weights.sum()), 6) for name in sorted(set(names))}


def test_groups_are_drawn_alike_whatever_their_size() -> None:
    crop_set = _crop_set({("big", 0): 90, ("big", 1): 30, ("small", 0): 5, ("small", 1): 5})
    weights = crop_set.group_weights(balance="groups")
    assert weights.mean() == pytest.approx(1.0)
    assert _share_per_set(crop_set, weights) == {"big": 0.5, "small": 0.5}
    fakes = crop_set.labels == 1
    assert weights[fakes & (np.array(crop_set.datasets) == "big")].sum() == pytest.approx(weights.sum() / 4)


def test_set_weight_draws_a_set_that_many_times_as_often() -> None:
    crop_set = _crop_set({("a", 0): 10, ("a", 1): 10, ("b", 0): 40, ("c", 0): 7, ("c", 1): 3})
    weights = crop_set.group_weights({"a": 3.0}, balance="groups")
    assert weights.mean() == pytest.approx(1.0)
    # groups: a/real and a/fake weigh 3 each; b/real, c/real and c/fake 1 each: 9 in all
    assert _share_per_set(crop_set, weights) == {"a": round(6 / 9, 6), "b": round(1 / 9, 6), "c": round(2 / 9, 6)}


def test_classes_balance_draws_real_and_fake_alike_and_sources_alike_within_each() -> None:
    crop_set = _crop_set({("a", 0): 10, ("a", 1): 10, ("b", 0): 40, ("c", 0): 7, ("c", 1): 3, ("d", 1): 50})
    weights = crop_set.group_weights()
    labels, names = crop_set.labels, np.array(crop_set.datasets)
    assert weights[labels == 1].sum() == pytest.approx(weights.sum() / 2)
    for name in ("a", "b", "c"):  # three real sources: a sixth each; three fake ones (a, c, d): a sixth each
        assert weights[(names == name) & (labels == 0)].sum() == pytest.approx(weights.sum() / 6)
    weighted = crop_set.group_weights({"d": 2.0})
    assert weighted[(names == "d")].sum() == pytest.approx(weighted.sum() / 4)  # 2 of the fakes' 4 parts


def test_an_unknown_balance_is_refused() -> None:
    with pytest.raises(ValueError, match="balance"):
        _crop_set({("a", 0): 1, ("a", 1): 1}).group_weights(balance="sets")
