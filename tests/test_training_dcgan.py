"""The DCGAN-made set: learns from the training part's real photos only, writes real/ and fake/ prepared alike
(128 px JPEG), resumes from its checkpoint, and says so when there is nothing to learn from."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from made_sets import set_and_split
from training import dcgan
from training.data import Split, make_split, scan_dataset

TINY = ["--steps", "2", "--count", "4", "--width", "8"]


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    return set_and_split(tmp_path, monkeypatch, dcgan)


def test_it_writes_a_set_of_real_and_generated_faces_prepared_alike(dataset, tmp_path: Path) -> None:
    data, split = dataset
    out = tmp_path / "made"
    assert dcgan.main(["--data", str(data), "--split", str(split), "--out", str(out), *TINY]) == 0
    samples = scan_dataset(out)
    assert sorted(s.label for s in samples) == [0] * 4 + [1] * 4
    for sample in samples:
        with Image.open(sample.path) as image:
            assert (image.format, image.size) == ("JPEG", (128, 128))
    train_keys = {Path(k).stem for k in Split.load(split).datasets["faces"]["train"]}
    learned_from = {p.stem.removeprefix("faces_") for p in (out / "real").iterdir()}
    assert learned_from <= train_keys and all(name.startswith("real") for name in learned_from)
    with Image.open(out / "samples.png") as grid:
        assert grid.size == (8 * dcgan.SIZE, 8 * dcgan.SIZE)


def test_resume_goes_on_from_the_checkpoint(dataset, tmp_path: Path, monkeypatch) -> None:
    data, split = dataset
    out = tmp_path / "made"
    where = ["--data", str(data), "--split", str(split), "--out", str(out), "--count", "4", "--width", "8"]
    assert dcgan.main([*where, "--steps", "2"]) == 0
    steps_run = []
    step = dcgan.Gan.train_step
    monkeypatch.setattr(dcgan.Gan, "train_step", lambda gan, real: steps_run.append(1) or step(gan, real))
    assert dcgan.main([*where, "--steps", "3", "--resume"]) == 0
    assert len(steps_run) == 1
    assert torch.load(out / "gan.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize("upsample", ["transposed", "resize"])
def test_either_generator_makes_64_px_faces_and_only_the_resize_one_avoids_transposed_steps(upsample: str) -> None:
    net = dcgan.generator(8, upsample)
    assert net(torch.randn(2, dcgan.LATENT, 1, 1)).shape == (2, 3, dcgan.SIZE, dcgan.SIZE)
    transposed = [m for m in net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == (5 if upsample == "transposed" else 1)  # the resize one keeps only the 1 -> 4 projection


def test_resuming_with_another_generator_is_refused(dataset, tmp_path: Path, capsys) -> None:
    data, split = dataset
    where = ["--data", str(data), "--split", str(split), "--out", str(tmp_path / "made"), "--count", "4", "--width", "8"]
    assert dcgan.main([*where, "--steps", "2"]) == 0
    assert dcgan.main([*where, "--steps", "3", "--resume", "--upsample", "resize"]) == 2
    assert "transposed up-sampling" in capsys.readouterr().err


def test_a_split_without_real_training_photos_is_refused(dataset, tmp_path: Path, capsys) -> None:
    data, _ = dataset
    empty = tmp_path / "other.json"
    make_split(scan_dataset(data), seed=0).model_copy(update={"datasets": {}}).save(empty)
    assert dcgan.main(["--data", str(data), "--split", str(empty), "--out", str(tmp_path / "made"), *TINY]) == 2
    assert "no real photos" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the DCGAN's --device cuda")
def test_it_trains_on_cuda_and_writes_the_same_kind_of_set(dataset, tmp_path: Path) -> None:
    data, split = dataset
    out = tmp_path / "made-on-cuda"
    assert dcgan.main(["--data", str(data), "--split", str(split), "--out", str(out), *TINY, "--device", "cuda"]) == 0
    assert sorted(s.label for s in scan_dataset(out)) == [0] * 4 + [1] * 4
    state = torch.load(out / "gan.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2
