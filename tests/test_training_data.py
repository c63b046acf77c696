"""Folder datasets and their splits: scanning, stratification, determinism, reuse, and clear errors."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import DatasetError, Split, make_split, scan_dataset
from training.train import load_split


def write_images(folder: Path, count: int, value: int = 128, suffix: str = ".png", start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"img{i:03d}{suffix}"
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "setA"
    write_images(root / "real", 20)
    write_images(root / "fake", 10)
    return root


def test_scan_labels_by_folder_recursively_and_ignores_other_files(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write_images(root / "real", 2)
    write_images(root / "real" / "nested", 1, suffix=".JPG")
    write_images(root / "fake", 3, suffix=".jpg")
    (root / "fake" / "notes.txt").write_text("not an image")
    samples = scan_dataset(root)
    assert len(samples) == 6
    assert sorted(s.key for s in samples if s.label == 0) == ["real/img000.png", "real/img001.png", "real/nested/img000.JPG"]
    assert {s.key for s in samples if s.label == 1} == {"fake/img000.jpg", "fake/img001.jpg", "fake/img002.jpg"}
    assert {s.dataset for s in samples} == {"mixed"}


def test_split_is_stratified_per_dataset_and_label(dataset: Path) -> None:
    split = make_split(scan_dataset(dataset), seed=0)
    parts = split.datasets["setA"]
    by_label = {split_name: {label: sum(k.startswith(label) for k in keys) for label in ("real", "fake")} for split_name, keys in parts.items()}
    # 20 real: 14 / 3 / 3; 10 fake: 7 / round(1.5) = 2 / 1
    assert by_label == {"train": {"real": 14, "fake": 7}, "val": {"real": 3, "fake": 2}, "test": {"real": 3, "fake": 1}}
    assert split.sizes() == {"setA": {"train": 21, "val": 5, "test": 4}}


def test_split_has_no_overlap_and_covers_every_file(dataset: Path) -> None:
    samples = scan_dataset(dataset)
    parts = make_split(samples, seed=3).datasets["setA"]
    train, val, test = (set(parts[name]) for name in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert train | val | test == {s.key for s in samples}


def test_split_is_deterministic_for_a_seed_and_changes_with_it(dataset: Path) -> None:
    samples = scan_dataset(dataset)
    assert make_split(samples, seed=7) == make_split(list(reversed(samples)), seed=7)
    assert make_split(samples, seed=7).datasets != make_split(samples, seed=8).datasets


def test_split_reused_from_file_selects_the_same_samples(dataset: Path, tmp_path: Path) -> None:
    samples = scan_dataset(dataset)
    split = make_split(samples, seed=1)
    split.save(tmp_path / "run" / "split.json")
    loaded = Split.load(tmp_path / "run" / "split.json")
    assert loaded == split
    assert [s.key for s in loaded.select(samples, "test")] == [s.key for s in split.select(samples, "test")]
    # files added after the split belong to no part of it: they never leak into test
    write_images(dataset / "fake", 5, start=100)
    grown = scan_dataset(dataset)
    assert len(grown) == len(samples) + 5
    assert loaded.select(grown, "test") == split.select(samples, "test")
    assert sum(len(loaded.select(grown, name)) for name in ("train", "val", "test")) == len(samples)


def test_a_split_extended_by_a_new_set_keeps_the_recorded_parts_and_splits_the_new_one(tmp_path: Path) -> None:
    write_images(tmp_path / "one" / "real", 10)
    write_images(tmp_path / "two" / "fake", 10)
    first = scan_dataset(tmp_path / "one")
    recorded = make_split(first, seed=3)
    both = first + scan_dataset(tmp_path / "two")
    extended, added = recorded.extended(both, seed=3)
    assert added == ["two"]
    assert extended.datasets["one"] == recorded.datasets["one"]
    assert extended.datasets["two"] == make_split(scan_dataset(tmp_path / "two"), seed=3).datasets["two"]
    assert extended.extended(both, seed=3) == (extended, [])


def test_select_keeps_datasets_apart_when_file_names_repeat(tmp_path: Path) -> None:
    write_images(tmp_path / "one" / "real", 6)
    write_images(tmp_path / "two" / "real", 6)
    samples = scan_dataset(tmp_path / "one") + scan_dataset(tmp_path / "two")
    split = make_split(samples, seed=0)
    for name in ("train", "val", "test"):
        chosen = split.select(samples, name)
        for dataset in ("one", "two"):
            assert sorted(s.key for s in chosen if s.dataset == dataset) == sorted(split.datasets[dataset][name])


def test_real_only_folder_is_a_dataset_with_every_split(tmp_path: Path) -> None:
    write_images(tmp_path / "utk" / "real", 10)
    samples = scan_dataset(tmp_path / "utk")
    assert {s.label for s in samples} == {0}
    sizes = make_split(samples, seed=0).sizes()
    assert sizes == {"utk": {"train": 7, "val": 2, "test": 1}}


def test_missing_folder_and_missing_classes_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        scan_dataset(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DatasetError, match="neither a real/ nor a fake/"):
        scan_dataset(tmp_path / "bare")


def test_empty_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    write_images(tmp_path / "half" / "real", 3)
    (tmp_path / "half" / "fake").mkdir()
    (tmp_path / "half" / "fake" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"fake holds no images"):
        scan_dataset(tmp_path / "half")


def test_fractions_must_add_up(dataset: Path) -> None:
    with pytest.raises(DatasetError, match="add up to 1"):
        make_split(scan_dataset(dataset), fractions=(0.8, 0.15, 0.15))


def test_lfw_style_sets_are_split_by_person_and_others_by_file(tmp_path: Path) -> None:
    root = tmp_path / "lfw-news"
    (root / "real").mkdir(parents=True)
    for person, count in {"Ann_Lee": 6, "Bo_Chen": 5, "Cy_Diaz": 1, **{f"P{i}_X": 2 for i in range(20)}}.items():
        for n in range(1, count + 1):
            Image.fromarray(np.full((8, 8, 3), n, np.uint8)).save(root / "real" / f"{person}_{n:04d}.jpg")
    samples = scan_dataset(root)
    parts = make_split(samples, seed=0).datasets["lfw-news"]
    people = {name: {key.split("/")[1].rsplit("_", 1)[0] for key in keys} for name, keys in parts.items()}
    assert not people["train"] & people["val"] and not people["train"] & people["test"] and not people["val"] & people["test"]
    assert sum(len(keys) for keys in parts.values()) == len(samples) and all(parts.values())
    other = tmp_path / "rff-like"
    write_images(other / "real", 20)
    assert make_split(scan_dataset(other), seed=0).sizes()["rff-like"] == {"train": 14, "val": 3, "test": 3}


def test_a_split_names_the_datasets_no_sample_was_given_for(tmp_path: Path) -> None:
    write_images(tmp_path / "one" / "real", 6)
    write_images(tmp_path / "two" / "fake", 6)
    one = scan_dataset(tmp_path / "one")
    split = make_split(one + scan_dataset(tmp_path / "two"), seed=0)
    assert split.missing(one) == ["two"]
    assert split.missing(one + scan_dataset(tmp_path / "two")) == []


def test_training_on_a_split_without_one_of_its_datasets_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_images(tmp_path / "one" / "real", 6)
    write_images(tmp_path / "broken" / "fake", 6)
    one = scan_dataset(tmp_path / "one")
    recorded = tmp_path / "recorded.json"
    make_split(one + scan_dataset(tmp_path / "broken"), seed=0).save(recorded)
    with caplog.at_level(logging.WARNING, logger="training.train"):
        load_split(argparse.Namespace(split=recorded, out=tmp_path / "run", seed=0), one)
    assert any("broken" in r.getMessage() and "neither trains nor validates" in r.getMessage() for r in caplog.records)
