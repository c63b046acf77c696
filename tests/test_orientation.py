"""A photo on its side: the orientation network, the turn it chooses, and the answer over real HTTP."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from service.config import REPO_ROOT, Settings, get_settings
from service.contract import ModelLoadError
from service.faces import FaceDetector, configured_detector
from service.orientation import TRANSPOSE, TURNS, OrientationCard, OrientationModel, box_in_photo, find_upright
from service.pipeline import Pipeline
from service.onnx_model import OnnxClassifier
from service_fixtures import encode, shared_images
from training import orientation as training_orientation

UNDO = {0: 0, 90: 270, 180: 180, 270: 90}  # the turn that brings a photo turned this far back upright


@pytest.fixture(scope="module")
def model() -> OrientationModel:
    return OrientationModel(get_settings().orientation_model)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(configured_detector())


def photo(subset: str, index: int = 0) -> Image.Image:
    return Image.open(shared_images(subset, index + 1)[index]).convert("RGB")


def lit_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box of the photo's non-black pixels, as x1, y1, x2, y2 (exclusive ends)."""
    ys, xs = np.nonzero(np.asarray(image).max(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_box_found_in_the_turned_photo_is_given_in_the_photos_own_pixels(degrees):
    image = Image.new("RGB", (300, 200))
    image.paste((255, 255, 255), (40, 30, 110, 150))
    turned = image.transpose(TRANSPOSE[degrees])
    assert box_in_photo(lit_box(turned), degrees, *image.size) == lit_box(image)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_real_photo_on_its_side_is_searched_in_the_turn_that_stands_it_upright(model, detector, degrees):
    upright = photo("lfw-real/real")
    found = find_upright(upright.transpose(TRANSPOSE[degrees]), detector, model)
    assert found.degrees == UNDO[degrees]
    assert found.image.tobytes() == upright.tobytes()
    assert [face.box for face in found.faces] == [face.box for face in detector.detect(upright)]


def test_an_upright_photo_is_left_as_it_is(model, detector):
    upright = photo("sdfd-sd21/fake")
    found = find_upright(upright, detector, model)
    assert found.degrees == 0 and found.image is upright and found.faces


def test_a_photo_with_no_face_in_any_turn_is_read_whole():
    class Recording(FaceDetector):
        def __init__(self) -> None:
            super().__init__(configured_detector())
            self.searched: list[tuple[int, int]] = []

        def detect(self, image):
            self.searched.append(image.size)
            return super().detect(image)

    none = Recording()
    found = find_upright(Image.new("RGB", (60, 40), (90, 90, 90)), none, OrientationModel(get_settings().orientation_model))
    assert found.degrees == 0 and found.faces == [] and found.image.size == (60, 40)
    assert none.searched == [(60, 40), (40, 60), (40, 60), (60, 40)]  # upright, a quarter each way, upside down


def test_the_pipeline_reads_a_photo_on_its_side_as_it_reads_it_upright(model, detector):
    classifier = OnnxClassifier(get_settings().model, device="cpu")
    pipeline = Pipeline(classifier.card, detector, (0.0,), orientation=model)
    upright = photo("sdfd-sd21/fake", 1)
    expected = pipeline.run(upright, classifier.predict_crops)
    answer = pipeline.run(upright.transpose(Image.Transpose.ROTATE_90), classifier.predict_crops)
    assert answer.turned == 270
    assert answer.fake_probability == pytest.approx(expected.fake_probability, abs=1e-6)
    width, height = upright.size  # the upright photo is the sideways one turned 270 degrees: its boxes, in the sideways photo's pixels
    assert answer.faces[0].box == pytest.approx(box_in_photo(expected.faces[0].box, 270, height, width), abs=1e-3)
    unturned = Pipeline(classifier.card, detector, (0.0,)).run(upright.transpose(Image.Transpose.ROTATE_90), classifier.predict_crops)
    assert unturned.turned == 0


def test_turning_can_be_switched_off_and_a_missing_network_is_named():
    assert Settings(turn_sideways=False).orientation_path is None
    assert Settings().orientation_path == get_settings().orientation_model.resolve()
    with pytest.raises(ModelLoadError, match="orientation model not found"):
        OrientationModel("exports/no-such-orientation.onnx")


def test_the_served_answer_says_how_far_a_photo_on_its_side_was_turned(server):
    upright = photo("lfw-real/real", 2)

    def classify(image: Image.Image) -> dict:
        response = requests.post(f"{server.url}/classify", files={"image": ("photo.png", encode(image, "PNG"), "image/png")}, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    expected = classify(upright)
    assert expected["turned"] == 0
    for degrees in (90, 270):
        answer = classify(upright.transpose(TRANSPOSE[degrees]))
        assert answer["turned"] == UNDO[degrees]
        assert answer["verdict"] == expected["verdict"]
        assert answer["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-6)
        turned_back = [value for face in answer["faces"] for value in box_in_photo(tuple(face["box"]), degrees, *upright.size)]
        assert turned_back == pytest.approx([value for face in expected["faces"] for value in face["box"]], abs=1e-3)
    sideways = encode(upright.transpose(TRANSPOSE[90]), "PNG")
    response = requests.post(f"{server.url}/classify_batch", files=[("images", ("sideways.png", sideways, "image/png"))],
                             data={"csv": "true"}, timeout=120)
    assert response.status_code == 200, response.text
    (row,) = csv.DictReader(io.StringIO(response.json()["csv"]))
    assert row["turned"] == "270" and row["verdict"] == expected["verdict"]
    metrics = requests.get(f"{server.url}/metrics", timeout=120).text
    assert re.search(r'^facecheck_turned_total\{degrees="270"\} [1-9]', metrics, re.MULTILINE)
    assert re.search(r'^facecheck_turned_total\{degrees="90"\} [1-9]', metrics, re.MULTILINE)


def test_the_cli_says_how_far_it_turned_a_photo_and_can_be_told_not_to(tmp_path):
    sideways = tmp_path / "sideways.png"
    photo("lfw-real/real", 3).transpose(TRANSPOSE[90]).save(sideways)

    def line(**settings: str) -> str:
        done = subprocess.run([sys.executable, "-m", "service.cli", "classify", str(sideways)], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=600, env=dict(os.environ) | settings)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[0]

    turned = line()
    assert "1 face, turned 270" in turned and turned.endswith("sideways.png")
    assert "turned" not in line(FACECHECK_TURN_SIDEWAYS="false")


def test_training_exports_a_network_the_service_loads(tmp_path):
    torch.manual_seed(0)
    net = training_orientation.network()
    crops = torch.rand(2 * training_orientation.BATCH, 3, 64, 64) * 2 - 1
    training_orientation.train(net, crops, epochs=1)
    card = OrientationCard(version="test", created="2026-12-07T00:00:00+00:00", preprocess=training_orientation.SPEC, sure=0.8)
    target = tmp_path / "orientation.onnx"
    training_orientation.export(net, card, target)
    loaded = OrientationModel(target)
    assert loaded.card == card
    (probs,) = loaded.session.run(None, {loaded.input_name: np.zeros((3, 3, 64, 64), np.float32)})
    assert probs.shape == (3, len(TURNS)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert OrientationCard.model_validate_json(target.with_suffix(".json").read_text()) == card


def test_training_refuses_data_with_too_few_faces(tmp_path, monkeypatch, capsys):
    from made_sets import set_and_split

    data, split = set_and_split(tmp_path, monkeypatch, training_orientation)
    assert training_orientation.main(["--data", str(data), "--split", str(split), "--workers", "1", "--out", str(tmp_path / "o.onnx")]) == 2
    assert "training faces" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
