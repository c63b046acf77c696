"""Test-time views: the rotations in force come from the model card unless set, and a card with
tta_mirror classifies each rotation as it is and mirrored, and averages the two."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageOps

from service.config import DEFAULT_TTA_ANGLES, REPO_ROOT, Settings, get_settings
from service.faces import Face
from service.imaging import read_image_file
from service.onnx_model import OnnxClassifier, read_card
from service.pipeline import Pipeline
from service.preprocess import crop_face, stack_crops
from service_fixtures import encode, synthetic_face, uncalibrated_card
from training.calibrate import card_angles
from training.card import attach_card


class OneFace:
    def detect(self, image):
        return [Face(box=(60.0, 50.0, 190.0, 200.0), score=0.99)]


def test_a_mirroring_card_sends_each_rotation_with_its_mirror_image_and_averages_the_two() -> None:
    card = uncalibrated_card().model_copy(update={"tta_mirror": True})
    pipeline = Pipeline(card, OneFace(), angles=(0.0, 15.0), band=None)
    prepared = pipeline.prepare(synthetic_face(seed=3))
    assert len(prepared.crops) == 4  # one face, two rotations, each as it is and mirrored
    np.testing.assert_array_equal(prepared.crops[1], prepared.crops[0][:, ::-1])
    np.testing.assert_array_equal(prepared.crops[3], prepared.crops[2][:, ::-1])
    assert not np.array_equal(prepared.crops[0], prepared.crops[2])
    result = pipeline.assemble(prepared, np.array([0.2, 0.4, 0.6, 0.9]))
    (face,) = result.faces
    assert face.tta == pytest.approx({"0": 0.3, "15": 0.75})
    assert face.fake_probability == pytest.approx(0.525) and result.fake_probability == pytest.approx(0.525)


def test_without_mirroring_a_rotation_is_one_crop() -> None:
    pipeline = Pipeline(uncalibrated_card(), OneFace(), angles=(0.0, 15.0), band=None)
    assert len(pipeline.prepare(synthetic_face(seed=3)).crops) == 2


def test_the_rotations_in_force_are_the_settings_else_the_cards_else_the_default() -> None:
    card = uncalibrated_card()
    fitted_upright = card.model_copy(update={"training": {**card.training, "tta_angles": [0.0]}})
    recording_none = card.model_copy(update={"training": {}})
    assert Settings(tta_angles=None).angles_for(fitted_upright) == (0.0,)
    assert Settings(tta_angles="card").angles_for(fitted_upright) == (0.0,)
    assert Settings(tta_angles=None).angles_for(recording_none) == DEFAULT_TTA_ANGLES
    assert Settings(tta_angles=None).angles_for() == DEFAULT_TTA_ANGLES
    assert Settings(tta_angles="-5,5").angles_for(fitted_upright) == (-5.0, 5.0)
    assert Settings(tta_angles="").angles_for(fitted_upright) == ()  # the upright crop alone


def test_calibrate_measures_at_the_cards_rotations_an_empty_list_being_upright_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.calibrate.get_settings", lambda: Settings(tta_angles=None))
    card = uncalibrated_card()
    assert card_angles(card.model_copy(update={"training": {"tta_angles": []}})) == ()
    assert card_angles(card.model_copy(update={"training": {"tta_angles": [-10, 10]}})) == (-10.0, 10.0)
    assert card_angles(card.model_copy(update={"training": {}})) == DEFAULT_TTA_ANGLES


def test_the_cli_applies_a_mirroring_cards_views_and_rotations_by_default(tmp_path: Path) -> None:
    """A copy of the shipped model whose card says: upright only, mirrored. The CLI, with no --tta and no
    FACECHECK_TTA_ANGLES, answers with the card's rotation, and its probability is the calibrated mean
    of what the network says of the face crop and of its mirror image."""
    served = read_card(get_settings().model)
    card = served.model_copy(update={"tta_mirror": True, "training": {**served.training, "tta_angles": [0.0]}})
    model = tmp_path / "mirrored.onnx"
    shutil.copy(get_settings().model, model)
    attach_card(model, card)
    photo = tmp_path / "face.jpg"
    photo.write_bytes(encode(synthetic_face(seed=5)))
    env = {k: v for k, v in os.environ.items() if k != "FACECHECK_TTA_ANGLES"}
    done = subprocess.run([sys.executable, "-m", "service.cli", "classify", str(photo), "--model", str(model), "--json", str(tmp_path / "out.json")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (item,) = json.loads((tmp_path / "out.json").read_text())["results"]
    (face,) = item["result"]["faces"]
    assert list(face["tta"]) == ["0"]
    crop = crop_face(read_image_file(str(photo), get_settings().max_bytes, get_settings().max_pixels), face["box"], card.preprocess)
    raw = OnnxClassifier(model, "cpu").predict_crops(stack_crops([crop, ImageOps.mirror(crop)]))
    expected = float(card.calibration.apply(np.asarray(raw, dtype=np.float64).mean(keepdims=True))[0])  # the pair's mean, then calibrated
    assert face["fake_probability"] == pytest.approx(expected, abs=1e-5)
    assert face["fake_probability"] != pytest.approx(float(card.calibration.apply(raw[:1])[0]), abs=1e-5)

