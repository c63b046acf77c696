"""The "uncertain" verdict on every surface of a real server whose band (FACECHECK_UNCERTAIN_BAND) holds a
known photo's probability: /classify, the batch summary, CSV and sorted copies, /annotate, /metrics and the
OpenAPI document."""
from __future__ import annotations

import csv
import io

import numpy as np
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.annotate import COLOURS
from service_fixtures import assert_consistent, assert_summary_adds_up


def classify(server, data: bytes, filename: str = "photo.jpg") -> dict:
    response = requests.post(f"{server.url}/classify", files={"image": (filename, data, "image/jpeg")}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_photo_inside_the_band_is_uncertain_and_one_outside_is_not(banded_server, known):
    inside = classify(banded_server, known.inside, "face.jpg")
    assert_consistent(inside)
    assert inside["model"]["uncertain_band"] == list(known.band)
    assert inside["verdict"] == "uncertain" and [face["label"] for face in inside["faces"]] == ["uncertain"]
    assert abs(inside["fake_probability"] - known.probabilities[0]) < 1e-5
    outside = classify(banded_server, known.outside, "ramp.png")
    assert_consistent(outside)
    assert outside["verdict"] == ("fake" if outside["fake_probability"] >= outside["model"]["threshold"] else "real")


def test_the_batch_counts_sorts_and_writes_uncertain(banded_server, known):
    files = [("images", ("face.jpg", known.inside, "image/jpeg")), ("images", ("ramp.png", known.outside, "image/png")),
             ("images", ("junk.jpg", b"not a photo", "image/jpeg"))]
    response = requests.post(f"{banded_server.url}/classify_batch", files=files, data={"sort": "true", "csv": "true"}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_summary_adds_up(body)
    assert body["summary"]["uncertain"] == 1 and body["summary"]["errors"] == 1
    face = body["results"][0]
    assert face["result"]["verdict"] == "uncertain" and face["sorted_to"].startswith("uncertain/")
    assert (banded_server.sorted_root / face["sorted_to"]).read_bytes() == known.inside
    rows = list(csv.DictReader(io.StringIO(body["csv"])))
    assert [row["verdict"] for row in rows] == ["uncertain", body["results"][1]["result"]["verdict"], ""]
    assert rows[0]["sorted_to"] == face["sorted_to"]


def _predictions(server) -> dict[str, float]:
    text = requests.get(f"{server.url}/metrics", timeout=120).text
    return {s.labels["label"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "facecheck_predictions_total"}


def test_prometheus_counts_uncertain_answers(banded_server, known):
    before = _predictions(banded_server).get("uncertain", 0.0)
    classify(banded_server, known.inside)
    assert _predictions(banded_server)["uncertain"] == before + 1


def test_the_annotated_picture_boxes_an_uncertain_face_in_amber(banded_server, known):
    response = requests.post(f"{banded_server.url}/annotate", files={"image": ("face.jpg", known.inside, "image/jpeg")}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-facecheck-verdict"] == "uncertain"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=int)
    (face,) = classify(banded_server, known.inside)["faces"]
    x1, y1, x2, y2 = (round(v) for v in face["box"])
    middle = (y1 + y2) // 2
    for x, y in ((x1, middle), (x2, middle)):  # the box's left and right edges
        assert tuple(drawn[y, x]) == COLOURS["uncertain"], (x, y)
    stripe = drawn[-3, 1]  # the banner's stripe, bottom left, in the verdict's colour
    assert tuple(stripe) == COLOURS["uncertain"]


def test_the_openapi_document_tells_clients_about_uncertain(banded_server):
    spec = requests.get(f"{banded_server.url}/docs.json", timeout=120).json()
    schemas = spec["components"]["schemas"]
    image, face, summary = schemas["ImageResult"], schemas["FaceResult"], schemas["BatchSummary"]
    assert image["properties"]["verdict"]["enum"] == ["real", "fake", "uncertain"]
    assert "reads only \"real\" and \"fake\"" in image["properties"]["verdict"]["description"]
    assert "uncertain" in str(face["properties"]["label"]) and "uncertain" in summary["properties"]
    assert "uncertain_band" in schemas["ModelInfo"]["properties"]
