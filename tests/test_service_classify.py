"""POST /classify against the real server: faces, several faces, no face, tiny images."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image
from pillow_heif import register_heif_opener

from service.config import get_settings
from service.onnx_model import read_card
from service_fixtures import assert_consistent, assert_error, encode, gradient, mosaic, shared_images, synthetic_face


def classify(server, data: bytes, filename: str = "photo.jpg", **params) -> requests.Response:
    return requests.post(f"{server.url}/classify", files={"image": (filename, data, "image/jpeg")}, params=params, timeout=120)


def classify_raw(server, data: bytes, content_type: str = "image/jpeg", **params) -> requests.Response:
    return requests.post(f"{server.url}/classify", data=data, headers={"Content-Type": content_type}, params=params, timeout=120)


def test_synthetic_face_multipart_and_raw_body_agree(server):
    data = encode(synthetic_face())
    multipart = classify(server, data, "drawn.jpg")
    raw = classify_raw(server, data)
    assert multipart.status_code == 200, multipart.text
    assert raw.status_code == 200, raw.text
    result = multipart.json()
    assert result["file"] == "drawn.jpg"
    assert_consistent(result)
    assert len(result["faces"]) == 1
    x1, y1, x2, y2 = result["faces"][0]["box"]
    assert 40 < x1 < x2 < 216 and 20 < y1 < y2 < 240  # the drawn head spans x 68-188, y 20-210
    assert raw.json()["faces"] == result["faces"]
    assert raw.json()["fake_probability"] == result["fake_probability"]


def test_real_face(server):
    (path,) = shared_images("rff/fake", 1)
    response = classify(server, path.read_bytes(), path.name)
    assert response.status_code == 200, response.text
    result = response.json()
    assert_consistent(result)
    assert result["file"] == path.name
    assert len(result["faces"]) == 1 and result["faces"][0]["detection_score"] > 0.9
    card = read_card(get_settings().model)
    band = get_settings().band_for(card)
    assert result["model"] == {"name": card.name, "version": card.version, "architecture": card.architecture, "threshold": card.threshold,
                               "calibration": card.calibration.method, "uncertain_band": list(band.edges) if band else None}


@pytest.mark.parametrize("source", ["synthetic", "shared"])
def test_several_faces_verdict_follows_the_most_fake_face(server, source):
    if source == "shared":
        faces = [Image.open(path) for path in shared_images("tpdne128/real", 2) + shared_images("tpdne128/fake", 1)]
    else:
        faces = [synthetic_face(seed=seed, skin=skin) for seed, skin in ((1, (224, 182, 150)), (2, (190, 140, 110)), (3, (240, 200, 170)))]
    response = classify(server, encode(mosaic(faces, 200)), "group.jpg")
    assert response.status_code == 200, response.text
    result = response.json()
    assert_consistent(result)
    assert len(result["faces"]) == 3
    lefts = sorted(face["box"][0] for face in result["faces"])
    assert lefts[1] - lefts[0] > 150 and lefts[2] - lefts[1] > 150  # one face per tile, not three on one
    most_fake = max(result["faces"], key=lambda face: face["fake_probability"])
    band = result["model"]["uncertain_band"]
    if band is None or band[0] <= result["model"]["threshold"] <= band[1]:  # labels rise with the probability
        assert result["verdict"] == most_fake["label"]


def test_no_face_is_said_and_still_classified(server):
    response = classify(server, encode(gradient(), "PNG"), "ramp.png")
    assert response.status_code == 200, response.text
    result = response.json()
    assert_consistent(result)
    assert result["faces"] == [] and result["face_found"] is False


@pytest.mark.parametrize("how", ["query", "form"])
def test_no_face_rejected_on_request(server, how):
    data = encode(gradient(), "PNG")
    if how == "query":
        response = classify(server, data, "ramp.png", reject_no_face="true")
    else:
        response = requests.post(f"{server.url}/classify", files={"image": ("ramp.png", data, "image/png")},
                                 data={"reject_no_face": "true"}, timeout=120)
    assert response.status_code == 422
    assert response.json() == {"error": response.json()["error"], "status": 422, "reason": "no_face"}


def test_reject_no_face_keeps_faces(server):
    response = classify(server, encode(synthetic_face()), reject_no_face="1")
    assert response.status_code == 200, response.text
    assert response.json()["face_found"] is True


@pytest.mark.parametrize("size", [(2, 1), (5, 5), (3, 200)])
def test_tiny_images_get_a_result(server, size):
    response = classify_raw(server, encode(gradient(*size), "PNG"), "image/png")
    assert response.status_code == 200, response.text
    result = response.json()
    assert_consistent(result)
    assert result["faces"] == []


@pytest.mark.parametrize("size, colour, fmt", [((1, 1), (200, 120, 90), "PNG"), ((640, 480), (255, 255, 255), "JPEG"),
                                               ((300, 300), (128, 128, 128), "PNG")])
def test_blank_images_are_refused_not_guessed(server, size, colour, fmt):
    response = classify_raw(server, encode(Image.new("RGB", size, colour), fmt), f"image/{fmt.lower()}")
    assert_error(response, 422, "blank")
    assert "flat colour" in response.json()["error"]


def test_one_differing_pixel_is_a_picture(server):
    image = Image.new("RGB", (300, 300), (128, 128, 128))
    image.putpixel((10, 10), (140, 128, 128))
    response = classify_raw(server, encode(image, "PNG"), "image/png")
    assert response.status_code == 200, response.text


def test_octet_stream_body_and_other_modes(server):
    for image in (synthetic_face().convert("L"), synthetic_face().convert("RGBA"), synthetic_face().convert("P")):
        response = classify_raw(server, encode(image, "PNG"), "application/octet-stream")
        assert response.status_code == 200, response.text
        assert_consistent(response.json())


def test_a_heic_photo_is_answered_as_the_same_photo_in_png(server):
    """HEIC, as iPhones save photos: decoded through pillow-heif, the same face and nearly the same answer."""
    register_heif_opener()  # to write one here
    (path,) = shared_images("sdfd-sd21/fake", 1)
    photo = Image.open(path).convert("RGB")
    answers = []
    for fmt, options in (("PNG", {}), ("HEIF", {"quality": 90})):
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **options)
        response = classify(server, buffer.getvalue(), f"photo.{fmt.lower()}")
        assert response.status_code == 200, response.text
        assert_consistent(response.json())
        answers.append(response.json())
    png, heic = answers
    assert len(heic["faces"]) == len(png["faces"]) == 1
    assert all(abs(a - b) <= 4 for a, b in zip(heic["faces"][0]["box"], png["faces"][0]["box"]))
    assert abs(heic["fake_probability"] - png["fake_probability"]) < 0.1
