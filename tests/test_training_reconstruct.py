"""The reconstruction set: real crops of the training part only, each beside the autoencoder's copy of it, both
prepared alike (224 px JPEG); the decoder up-samples as asked; resume goes on, and a mismatch is refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from made_sets import set_and_split
from training import dcgan, reconstruct
from training.data import Split, scan_dataset
from training.dcgan import CROP_SPEC

TINY = ["--steps", "2", "--count", "4", "--width", "4", "--latent", "2"]


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    return set_and_split(tmp_path, monkeypatch, reconstruct)


def test_each_fake_is_the_reconstruction_of_a_training_real_beside_it(dataset, tmp_path: Path) -> None:
    data, split = dataset
    out = tmp_path / "made"
    assert reconstruct.main(["--data", str(data), "--split", str(split), "--out", str(out), *TINY]) == 0
    samples = scan_dataset(out)
    assert sorted(s.label for s in samples) == [0] * 4 + [1] * 4
    for sample in samples:
        with Image.open(sample.path) as image:
            assert (image.format, image.size) == ("JPEG", (CROP_SPEC.input_size, CROP_SPEC.input_size))
    reals = sorted(p.stem for p in (out / "real").iterdir())
    assert sorted(p.stem.removeprefix("recon_") for p in (out / "fake").iterdir()) == reals
    train_keys = {Path(k).stem for k in Split.load(split).datasets["faces"]["train"]}
    assert {name.removeprefix("faces_") for name in reals} <= train_keys
    assert all(name.startswith("faces_real") for name in reals)
    with Image.open(out / "samples.png") as grid:
        assert grid.size == (4 * CROP_SPEC.input_size, 3 * CROP_SPEC.input_size)  # originals, copies, difference


@pytest.mark.parametrize("upsample", ["transposed", "resize"])
def test_the_autoencoder_gives_back_an_image_of_its_input_size_through_the_chosen_up_sampling(upsample: str) -> None:
    net = reconstruct.autoencoder(4, 2, upsample)
    assert net(torch.zeros(1, 3, 96, 120)).shape == (1, 3, 96, 120)
    transposed = [m for m in net if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == (2 if upsample == "transposed" else 0)


def test_resume_goes_on_and_a_different_network_is_refused(dataset, tmp_path: Path, monkeypatch, capsys) -> None:
    data, split = dataset
    out = tmp_path / "made"
    where = ["--data", str(data), "--split", str(split), "--out", str(out), "--count", "4", "--width", "4", "--latent", "2"]
    assert reconstruct.main([*where, "--steps", "2"]) == 0
    steps_run = []
    step = reconstruct.Reconstructor.train_step
    monkeypatch.setattr(reconstruct.Reconstructor, "train_step", lambda model, patches: steps_run.append(1) or step(model, patches))
    assert reconstruct.main([*where, "--steps", "3", "--resume"]) == 0
    assert len(steps_run) == 1
    assert torch.load(out / "autoencoder.pt", weights_only=True)["step"] == 3
    assert reconstruct.main([*where, "--steps", "4", "--resume", "--upsample", "resize"]) == 2
    assert "resume it with the same" in capsys.readouterr().err


def test_a_set_without_real_photos_in_its_training_part_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    data, split = set_and_split(tmp_path, monkeypatch, reconstruct, labels=("fake",))
    assert reconstruct.main(["--data", str(data), "--split", str(split), "--out", str(tmp_path / "made"), *TINY]) == 2
    assert "no real photos" in capsys.readouterr().err


def test_the_dcgan_still_learns_from_the_same_crops_scaled_to_its_size(tmp_path: Path, monkeypatch) -> None:
    data, split = set_and_split(tmp_path, monkeypatch, dcgan)
    names, crops = dcgan.real_crops([data], Split.load(split), dcgan.CropCache())
    small_names, faces = dcgan.real_faces([data], Split.load(split), dcgan.CropCache())
    assert small_names == names and faces.shape == (len(crops), dcgan.SIZE, dcgan.SIZE, 3)
