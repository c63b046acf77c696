"""The parts of a fake face its file name says were replaced, and --part-loss's masking of the rest."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training import train
from training.data import Sample
from training.parts import PARTS, part_code, part_targets


def sample(name: str, label: int, dataset: str = "rff") -> Sample:
    return Sample(Path(f"/data/{dataset}/{'fake' if label else 'real'}/{name}"), label, dataset)


@pytest.mark.parametrize(("name", "code"), [
    ("mid_12_1100.jpg", (1, 0, 0)),  # both eyes
    ("easy_3_0100.jpg", (1, 0, 0)),  # the right eye alone is still "eyes": a flip swaps the two
    ("hard_200_0011.jpg", (0, 1, 1)),
    ("easy_1_1111.jpg", (1, 1, 1)),
    ("mid_7_0000.jpg", (0, 0, 0)),
])
def test_an_rff_fake_names_the_parts_pasted_from_another_face(name: str, code: tuple[int, int, int]) -> None:
    assert PARTS == ("eyes", "nose", "mouth")
    assert part_code(sample(name, 1)) == code


@pytest.mark.parametrize("name", ["seed0001.jpg", "mid_12_110.jpg", "mid_12_1102.jpg", "other_1_1111.jpg", "mid_12_1100_copy.jpg"])
def test_a_fake_without_a_code_has_unknown_parts(name: str) -> None:
    assert part_code(sample(name, 1, "tpdne128")) is None


def test_a_real_photo_replaced_nothing_whatever_its_name() -> None:
    assert part_code(sample("mid_12_1111.jpg", 0)) == (0, 0, 0)
    targets, known = part_targets([sample("a.jpg", 0), sample("mid_1_0011.jpg", 1), sample("seed.png", 1, "sdfd")])
    assert targets.dtype == np.float32 and targets.tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert known.tolist() == [True, True, False]


def trainer_with_parts(targets: list[list[int]], known: list[bool]) -> SimpleNamespace:
    return SimpleNamespace(part_targets=np.array(targets, dtype=np.float32), part_known=np.array(known), device=torch.device("cpu"))


def test_the_part_loss_counts_only_photos_whose_parts_are_known_and_not_blended() -> None:
    trainer = trainer_with_parts([[0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1]], [True, True, False, True])
    index, blended = np.array([1, 2, 3]), np.array([False, False, True])
    sure_right = torch.tensor([[20.0, -20.0, 20.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert train.Trainer._part_loss(trainer, sure_right, index, blended).item() == pytest.approx(0.0, abs=1e-6)
    sure_wrong = -sure_right
    assert train.Trainer._part_loss(trainer, sure_wrong, index, blended).item() == pytest.approx(20.0, rel=1e-3)


def test_the_part_loss_reads_both_views_of_a_consistency_batch_and_is_zero_without_known_parts() -> None:
    trainer = trainer_with_parts([[1, 0, 0], [0, 0, 0]], [True, False])
    index, blended = np.array([0, 1]), np.zeros(2, dtype=bool)
    views = torch.tensor([[5.0, -5.0, -5.0], [9.0, 9.0, 9.0], [-5.0, 5.0, 5.0], [9.0, 9.0, 9.0]], requires_grad=True)
    loss = train.Trainer._part_loss(trainer, views, index, blended)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(views[[0, 2]], torch.tensor([[1.0, 0, 0]] * 2))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert views.grad[[1, 3]].abs().sum() == 0  # the unknown photo, in both views, teaches nothing
    none_known = train.Trainer._part_loss(trainer_with_parts([[0, 0, 0]], [False]), views[:1], np.array([0]), np.zeros(1, dtype=bool))
    assert none_known.item() == 0.0
