"""Staging a training run for a lent GPU: the carried photos, their folders and the split that names them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import export, lent_gpu
from training.data import DatasetError, Split, make_split, scan_dataset


def _set(root: Path, name: str, count: int) -> Path:
    rng = np.random.default_rng(len(name))
    for label in ("real", "fake"):
        (root / name / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / name / label / f"{label}{i:02d}.jpg", quality=95)
    return root / name


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> tuple[Path, list[Path], Path]:
    """A git checkout that ignores .gpd*, two sets beside it, and their split."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    (checkout / ".git" / "info" / "exclude").write_text("/.gpd*/\n")
    sets = [_set(tmp_path / "data", "one", 20), _set(tmp_path / "data", "two", 20)]
    split = tmp_path / "split.json"
    make_split([s for folder in sets for s in scan_dataset(folder)], seed=0).save(split)
    monkeypatch.chdir(checkout)
    return checkout, sets, split


def test_it_carries_train_and_val_photos_once_each_and_a_split_that_names_exactly_them(repo) -> None:
    checkout, sets, split_file = repo
    args = [a for folder in sets for a in ("--data", str(folder))]
    assert lent_gpu.main([*args, "--split", str(split_file), "--keep", "two:train=0.5", "--calls", "2",
                          "--budget-mb", "1", "--last-reserve-mb", "0.2"]) == 0
    carried = sorted((p.relative_to(folder / "data")).as_posix() for folder in (checkout / ".gpd1", checkout / ".gpd2")
                     for p in (folder / "data").rglob("*.jpg"))
    assert len(carried) == len(set(carried))  # no photo in two folders
    original, device = Split.load(split_file), Split.load(checkout / ".gpd2" / "split.json")
    named = sorted(f"{name}/{key}" for name, parts in device.datasets.items() for part in ("train", "val") for key in parts[part])
    assert carried == named
    assert len(device.datasets["two"]["train"]) == round(len(original.datasets["two"]["train"]) / 2)
    assert device.datasets["one"]["train"] == original.datasets["one"]["train"]
    assert all(device.datasets[n]["test"] == original.datasets[n]["test"] for n in ("one", "two"))  # never carried, never changed
    test_keys = {f"{n}/{k}" for n in ("one", "two") for k in original.datasets[n]["test"]}
    assert not test_keys & set(carried)


def test_photos_that_do_not_fit_the_budgets_are_a_clear_error(repo, capsys) -> None:
    _, sets, split_file = repo
    assert lent_gpu.main(["--data", str(sets[0]), "--split", str(split_file), "--calls", "1", "--budget-mb", "0.01",
                          "--last-reserve-mb", "0"]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_it_refuses_folders_git_would_track(repo, capsys) -> None:
    checkout, sets, split_file = repo
    (checkout / ".git" / "info" / "exclude").write_text("")
    assert lent_gpu.main(["--data", str(sets[0]), "--split", str(split_file)]) == 2
    assert ".git/info/exclude" in capsys.readouterr().err
    assert not list(checkout.glob(".gpd*"))


def test_a_keep_option_out_of_range_is_refused() -> None:
    with pytest.raises(DatasetError, match="SET:PART=SHARE"):
        lent_gpu.parse_keep(["rff-val-0.5"])
    with pytest.raises(DatasetError, match="PART is train or val"):
        lent_gpu.parse_keep(["rff:test=0.5"])


@pytest.mark.slow
def test_the_machine_side_gathers_crops_trains_each_recipe_and_returns_small_checkpoints(repo, tmp_path: Path) -> None:
    checkout, sets, split_file = repo
    args = [a for folder in sets for a in ("--data", str(folder))]
    assert lent_gpu.main([*args, "--split", str(split_file), "--calls", "2", "--budget-mb", "1", "--last-reserve-mb", "0.2"]) == 0
    tiny = "--model cnn --input-size 32 --crop-mode whole --split $SPLIT --epochs 1 --epoch-size 16 --batch-size 8 --device cpu --pretrained none"
    (checkout / "recipes").write_text(f"# two runs\nboth {tiny} --data $DATA/one --data $DATA/two --loader-workers 1\n"
                                      f"blended {tiny} --data $DATA/one --self-blend 0.5\n")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "LENT_DATA": str(tmp_path / "gathered"), "FACECHECK_CACHE": str(tmp_path / "cache"),
           "CROP_ARGS": "--input-size 32 --crop-mode whole", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = Path(__file__).resolve().parent.parent / "training" / "lent_gpu_run.sh"
    done = subprocess.run(["bash", str(script), "train", "recipes"], cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "gathered").iterdir()) == ["one", "two"]  # both carried folders gathered
    for name in ("both", "blended"):
        state = torch.load(out / f"{name}.pt", map_location="cpu", weights_only=False)
        assert set(state) == set(lent_gpu.CHECKPOINT_KEEPS)  # no optimizer state
        assert "--split .gpd2/split.json" in state["command"] and "$DATA" not in state["command"]
        assert "epoch 1:" in (out / f"{name}.log").read_text()
    assert export.main(["--checkpoint", str(out / "both.pt"), "--name", "both", "--out", str(tmp_path / "x")]) == 0


def _photo_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in (folder / "data").rglob("*.jpg")) / 1e6


def test_by_default_each_folder_leaves_room_for_the_tree_the_call_carries(repo, monkeypatch) -> None:
    checkout, sets, split_file = repo
    (checkout / "model.bin").write_bytes(b"\0" * 400_000)  # untracked, not ignored: a call carries it too
    monkeypatch.setattr(lent_gpu, "CALL_LIMIT_MB", 0.48)  # 0.08 MB of photos a call beside the 0.4 MB tree
    monkeypatch.setattr(lent_gpu, "CALL_MARGIN_MB", 0.0)
    monkeypatch.setattr(lent_gpu, "SMALLEST_USEFUL_BUDGET_MB", 0.0)
    args = [a for folder in sets for a in ("--data", str(folder))]
    assert lent_gpu.main([*args, "--split", str(split_file), "--calls", "4", "--last-reserve-mb", "0"]) == 0
    folders = sorted(checkout.glob(".gpd*"))
    assert len(folders) == 4 and all(_photo_mb(f) <= 0.08 for f in folders)
    assert sum(_photo_mb(f) for f in folders) > 0.08  # more than one call's room, so the budget was binding


def test_a_tree_that_leaves_too_little_room_is_a_clear_error_naming_the_way_out(repo, monkeypatch, capsys) -> None:
    checkout, sets, split_file = repo
    (checkout / "model.bin").write_bytes(b"\0" * 400_000)
    monkeypatch.setattr(lent_gpu, "CALL_LIMIT_MB", 0.75)
    assert lent_gpu.main(["--data", str(sets[0]), "--split", str(split_file)]) == 2
    err = capsys.readouterr().err
    assert "carries the tree (0.4 MB" in err and "git rm -q --cached exports/*.onnx" in err
    assert not list(checkout.glob(".gpd*"))
