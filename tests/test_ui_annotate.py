"""POST /annotate against the real server, and the drawing module it shares with the CLI."""
from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from service.annotate import COLOURS, AnnotationWriter, annotate, banner_text
from service.schemas import FaceResult, ImageResult, ModelInfo
from service_fixtures import encode, gradient, synthetic_face


def post(server, path: str, data: bytes, filename: str = "photo.png", **params) -> requests.Response:
    return requests.post(f"{server.url}{path}", files={"image": (filename, data, "image/png")}, params=params, timeout=120)


def png_of(response: requests.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image.convert("RGB")


def test_annotate_boxes_the_face_in_its_colour_and_leaves_the_rest(server):
    original = synthetic_face(seed=5)
    data = encode(original, "PNG")  # lossless: the drawn picture can be compared pixel by pixel
    result = post(server, "/classify", data).json()
    response = post(server, "/annotate", data)
    drawn = png_of(response)
    assert drawn.size == original.size
    assert response.headers["x-facecheck-verdict"] == result["verdict"]
    assert float(response.headers["x-facecheck-fake-probability"]) == pytest.approx(result["fake_probability"], abs=1e-5)
    (face,) = result["faces"]
    x1, y1, x2, y2 = (round(v) for v in face["box"])
    before, after = np.asarray(original, dtype=int), np.asarray(drawn, dtype=int)
    middle = (y1 + y2) // 2
    for x, y in ((x1, middle), (x2, middle), ((x1 + x2) // 2, y2)):  # left, right and bottom edges of the box
        assert tuple(after[y, x]) == COLOURS[face["label"]], (x, y)
        assert np.abs(after[y, x] - before[y, x]).sum() > 60, (x, y)
    # Inside the box, below its label, the photo is untouched.
    assert np.array_equal(after[middle - 20:middle + 20, x1 + 10:x2 - 10], before[middle - 20:middle + 20, x1 + 10:x2 - 10])
    changed = np.abs(after - before).sum(axis=2) > 0
    assert changed.mean() < 0.5  # boxes, a label and a banner: not a different picture


def test_annotate_without_a_face_says_so_in_a_banner(server):
    original = gradient()
    response = post(server, "/annotate", encode(original, "PNG"))
    drawn = png_of(response)
    assert drawn.size == original.size and response.headers["x-facecheck-faces"] == "0"
    before, after = np.asarray(original, dtype=int), np.asarray(drawn, dtype=int)
    changed_rows = np.flatnonzero((np.abs(after - before).sum(axis=2) > 0).any(axis=1))
    assert changed_rows.size and changed_rows.min() > original.height * 0.7  # only the banner at the bottom
    assert np.array_equal(after[: original.height // 2], before[: original.height // 2])


def test_annotate_takes_a_raw_body_like_classify(server):
    data = encode(synthetic_face(seed=6))
    response = requests.post(f"{server.url}/annotate", data=data, headers={"Content-Type": "image/jpeg"}, timeout=120)
    assert png_of(response).size == (256, 256)


@pytest.mark.parametrize(("send", "status", "reason"), [
    (lambda s: requests.post(f"{s.url}/annotate", data=b"not an image", headers={"Content-Type": "image/jpeg"}, timeout=120), 400, "not_an_image"),
    (lambda s: requests.post(f"{s.url}/annotate", data=b"", headers={"Content-Type": "image/jpeg"}, timeout=120), 400, "empty"),
    (lambda s: requests.post(f"{s.url}/annotate", files={"photo": ("a.png", b"x", "image/png")}, timeout=120), 422, "bad_field"),
    (lambda s: requests.post(f"{s.url}/annotate", data=b"\xff" * (s.max_bytes + 1), headers={"Content-Type": "image/jpeg"}, timeout=120), 413, "too_many_bytes"),
    (lambda s: post(s, "/annotate", encode(gradient(), "PNG"), reject_no_face="true"), 422, "no_face"),
    (lambda s: post(s, "/annotate", encode(gradient(), "PNG"), reject_no_face="maybe"), 422, "bad_field"),
])
def test_annotate_errors_are_json(server, send, status, reason):
    response = send(server)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "status", "reason"} and body["status"] == status and body["reason"] == reason


def test_annotate_is_in_the_openapi_document(server):
    spec = requests.get(f"{server.url}/docs.json", timeout=120).json()
    annotate_op = spec["paths"]["/annotate"]["post"]
    assert "image/png" in annotate_op["responses"]["200"]["content"]
    form = annotate_op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["format"] == "binary" and "reject_no_face" in form["properties"]


def _result(faces: list[FaceResult], verdict: str = "fake", probability: float = 0.9) -> ImageResult:
    return ImageResult(file="x.png", verdict=verdict, fake_probability=probability, face_found=bool(faces), faces=faces,
                       whole_image=None if faces else {"0": probability}, model=ModelInfo(name="m", version="1", architecture="cnn", threshold=0.5),
                       timings_ms={})


def test_annotate_module_draws_every_kind_of_face_within_the_picture():
    faces = [FaceResult(box=(-10.0, -10.0, 40.0, 50.0), detection_score=0.99, fake_probability=0.9, label="fake", tta={"0": 0.9}),
             FaceResult(box=(50.0, 20.0, 90.0, 70.0), detection_score=0.98, fake_probability=0.1, label="real", tta={"0": 0.1}),
             FaceResult(box=(95.0, 60.0, 130.0, 99.0), detection_score=0.95, fake_probability=None, label=None, classified=False)]
    image = Image.new("RGB", (120, 100), (255, 255, 255))
    drawn = annotate(image, _result(faces))
    assert drawn.size == image.size and drawn.mode == "RGB"
    pixels = set(map(tuple, np.asarray(drawn).reshape(-1, 3).tolist()))
    assert COLOURS["fake"] in pixels and COLOURS["real"] in pixels and COLOURS[None] in pixels
    assert annotate(Image.new("RGB", (1, 1)), _result([])).size == (1, 1)  # nothing fits, nothing breaks


def test_banner_says_when_no_face_was_found():
    assert banner_text(_result([], "real", 0.3)).startswith("No face found; whole image classified: REAL")
    face = FaceResult(box=(0, 0, 1, 1), detection_score=1.0, fake_probability=0.9, label="fake", tta={"0": 0.9})
    assert banner_text(_result([face, face])) == "FAKE, fake probability 0.90 (most-fake of 2 faces)"
    turned = _result([face])
    turned.turned = 90
    assert banner_text(turned) == "FAKE, fake probability 0.90 (1 face, read turned 90 degrees)"


def test_an_uncertain_face_is_amber_and_the_banner_says_what_uncertain_means():
    face = FaceResult(box=(10.0, 10.0, 60.0, 70.0), detection_score=0.99, fake_probability=0.55, label="uncertain", tta={"0": 0.55})
    result = _result([face], "uncertain", 0.55)
    result.model.uncertain_band = (0.45, 0.7)
    assert banner_text(result) == "UNCERTAIN, fake probability 0.55 (in the band 0.45-0.70: the model is not sure) (1 face)"
    drawn = np.asarray(annotate(Image.new("RGB", (200, 160), (255, 255, 255)), result))
    assert tuple(drawn[40, 10]) == COLOURS["uncertain"]  # the box's left edge


def test_annotation_writer_keeps_the_folder_layout(tmp_path):
    writer = AnnotationWriter(tmp_path / "out")
    assert writer.path_for("sub/a.jpg") == tmp_path / "out" / "sub" / "a.jpg.png"
    for bad in ("../a.jpg", "/etc/a.jpg", "sub/../../a.jpg", ""):
        with pytest.raises(ValueError):
            writer.path_for(bad)
    written = writer.write(Image.new("RGB", (40, 30)), "sub/a.jpg", _result([]))
    assert Image.open(written).size == (40, 30) and [p.name for p in written.parent.iterdir()] == ["a.jpg.png"]
