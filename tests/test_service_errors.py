"""Bad input of every kind gets a JSON client error with the right status, never a 500."""
from __future__ import annotations

import io
import os

import pytest
import requests

from service_fixtures import assert_error, encode, png_bomb, synthetic_face

JPEG = encode(synthetic_face())
PNG = encode(synthetic_face(), "PNG")


def post_raw(server, data: bytes, content_type: str = "image/jpeg", path: str = "/classify", **params) -> requests.Response:
    return requests.post(f"{server.url}{path}", data=data, headers={"Content-Type": content_type}, params=params, timeout=120)


def post_file(server, data: bytes, filename: str, content_type: str = "image/jpeg", **fields) -> requests.Response:
    return requests.post(f"{server.url}/classify", files={"image": (filename, data, content_type)}, data=fields, timeout=120)


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("empty body", b"", "empty"),
    ("random bytes", os.urandom(4096), "not_an_image"),
    ("text", b"this is a text file, not a photo\n" * 20, "not_an_image"),
    ("truncated JPEG", JPEG[: len(JPEG) // 2], "corrupt"),
    ("truncated PNG", PNG[: len(PNG) // 2], "corrupt"),
    ("JPEG cut inside its header", JPEG[:200], "not_an_image"),
])
def test_bad_bytes_are_400(server, name, data, reason):
    assert_error(post_raw(server, data), 400, reason)
    assert_error(post_file(server, data, "photo.jpg"), 400, reason)


def test_png_decompression_bomb_is_413_before_decoding(server):
    bomb = png_bomb(30000)
    assert len(bomb) < 200_000  # 900 megapixels in a small file
    assert_error(post_raw(server, bomb, "image/png"), 413, "too_many_pixels")


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_too_many_bytes_is_413(server, how):
    data = JPEG + b"\0" * (server.max_bytes + 10 - len(JPEG))
    response = post_raw(server, data) if how == "raw" else post_file(server, data, "big.jpg")
    assert_error(response, 413, "too_many_bytes")


def test_bytes_over_the_limit_without_content_length_are_413(server):
    chunk = b"\0" * 65536

    def stream():
        for _ in range(server.max_bytes // len(chunk) + 2):
            yield chunk

    # A generator body goes out with chunked transfer encoding: no Content-Length to refuse on.
    assert_error(requests.post(f"{server.url}/classify", data=stream(), headers={"Content-Type": "image/jpeg"}, timeout=120),
                 413, "too_many_bytes")


@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
def test_bad_boolean_field_is_422(server, value):
    assert_error(post_raw(server, JPEG, reject_no_face=value), 422, "bad_field")
    assert_error(post_file(server, JPEG, "a.jpg", reject_no_face=value), 422, "bad_field")


def test_multipart_without_an_image_field_is_422(server):
    response = requests.post(f"{server.url}/classify", files={"photo": ("a.jpg", JPEG, "image/jpeg")}, timeout=120)
    assert_error(response, 422, "bad_field")
    response = requests.post(f"{server.url}/classify", files={"image": (None, "not a file")}, timeout=120)
    assert_error(response, 422, "bad_field")


def test_two_images_to_classify_is_422(server):
    files = [("image", ("a.jpg", JPEG, "image/jpeg")), ("image", ("b.jpg", JPEG, "image/jpeg"))]
    assert_error(requests.post(f"{server.url}/classify", files=files, timeout=120), 422, "bad_field")


def test_malformed_multipart_is_400(server):
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n" + JPEG[:100]
    response = post_raw(server, body, "multipart/form-data")  # no boundary parameter
    assert_error(response, 400, "bad_multipart")


def test_text_named_jpg_in_a_multipart_upload(server):
    assert_error(post_file(server, b"hello, I am text\n", "holiday.jpg", "image/jpeg"), 400, "not_an_image")


def test_errors_are_counted_by_reason(server):
    post_raw(server, b"")
    metrics = requests.get(f"{server.url}/metrics", timeout=120).text
    counts = {line.split("}")[0] + "}": float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("facecheck_errors_total{")}
    assert counts.get('facecheck_errors_total{reason="empty"}', 0) >= 1


def test_a_format_left_out_by_FACECHECK_FORMATS_is_400_and_the_batch_reports_it(jpeg_png_server):
    """WebP and HEIC are decoders untrusted bytes need not reach where an operator allows JPEG and PNG only."""
    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()  # this process writes the HEIC; the server has its own opener
    face = Image.open(io.BytesIO(JPEG))
    assert post_raw(jpeg_png_server, JPEG).status_code == 200
    assert post_raw(jpeg_png_server, PNG, "image/png").status_code == 200
    for name, kind in (("face.webp", "WEBP"), ("face.heic", "HEIF")):
        refused = post_file(jpeg_png_server, encode(face, kind), name, "image/*")
        assert_error(refused, 400, "not_an_image")
        assert "JPEG or PNG" in refused.json()["error"]
    files = [("images", ("face.jpg", JPEG, "image/jpeg")), ("images", ("face.webp", encode(face, "WEBP"), "image/webp"))]
    batch = requests.post(f"{jpeg_png_server.url}/classify_batch", files=files, timeout=120)
    assert batch.status_code == 200, batch.text
    items = {item["file"]: item for item in batch.json()["results"]}
    assert items["face.jpg"]["result"]["verdict"] in ("real", "fake", "uncertain")
    assert items["face.webp"]["error"]["status"] == 400 and "JPEG or PNG" in items["face.webp"]["error"]["error"]
