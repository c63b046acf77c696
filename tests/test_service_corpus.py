"""The bad-input corpus (tests/corpus.py) against the real server: one by one, and mixed in batches.

Each item gets its expected answer: 200 with a sane result (faces where there is a face, boxes in the
upright picture's pixels, every face beyond FACECHECK_MAX_FACES listed unclassified), or a JSON 4xx.
"""
from __future__ import annotations

import pytest
import requests

from corpus import Item, corpus, crowd, exif_rotated, face_on_canvas
from service_fixtures import assert_consistent, assert_error, assert_summary_adds_up, encode

ITEMS = corpus(2_000_000)  # the test server's FACECHECK_MAX_BYTES (conftest)


@pytest.fixture(scope="module")
def answers(server):
    """Each item's answer to POST /classify with the raw bytes as the body, asked once."""
    assert server.max_bytes == 2_000_000
    cache: dict[str, requests.Response] = {}

    def answer(item: Item) -> requests.Response:
        if item.name not in cache:
            cache[item.name] = requests.post(f"{server.url}/classify", data=item.data, headers={"Content-Type": item.content_type},
                                             timeout=300)
        return cache[item.name]

    return answer


@pytest.mark.parametrize("item", ITEMS, ids=[item.name for item in ITEMS])
def test_corpus_item(answers, item):
    response = answers(item)
    if item.status != 200:
        assert_error(response, item.status, item.reason)
        return
    assert response.status_code == 200, response.text
    result = response.json()
    assert_consistent(result)
    if item.face is not None:
        assert result["face_found"] is item.face, item.note
    for face in result["faces"]:
        assert 0.9 <= face["detection_score"] <= 1.0


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_face_box_is_in_the_upright_frame(server, orientation):
    """The face is drawn at the left of a 480x256 picture; stored turned and tagged, its box must come back
    where the face is once the orientation is applied (at the left, in a 480-wide frame), as for the upright JPEG."""
    def box(data: bytes) -> list[float]:
        response = requests.post(f"{server.url}/classify", data=data, headers={"Content-Type": "image/jpeg"}, timeout=300)
        assert response.status_code == 200, response.text
        (face,) = response.json()["faces"]
        return face["box"]

    upright = box(encode(face_on_canvas()))
    turned = box(exif_rotated(face_on_canvas(), orientation))
    x1, y1, x2, y2 = turned
    assert 30 < x1 < x2 < 230 and 0 < y1 < y2 < 256  # the drawn head spans x 68-188, y 20-210
    assert turned == pytest.approx(upright, abs=8)


def check_crowd(result: dict, max_faces: int, at_least: int) -> None:
    faces = result["faces"]
    assert len(faces) >= at_least
    classified = [face for face in faces if face["classified"]]
    unclassified = [face for face in faces if not face["classified"]]
    assert len(classified) == max_faces and faces[:max_faces] == classified  # the most confident detections
    assert result["faces_unclassified"] == len(unclassified) == len(faces) - max_faces
    for face in unclassified:
        assert face["fake_probability"] is None and face["label"] is None and face["tta"] == {}
    assert_consistent(result)
    scores = [face["detection_score"] for face in faces]
    assert scores == sorted(scores, reverse=True)


def test_drawn_crowd_beyond_max_faces(server, answers):
    (item,) = [item for item in ITEMS if "crowd" in item.tags]
    response = answers(item)
    assert response.status_code == 200, response.text
    check_crowd(response.json(), server.max_faces, 12)
    centres = {(round((f["box"][0] + f["box"][2]) / 2 // 160), round((f["box"][1] + f["box"][3]) / 2 // 160)) for f in response.json()["faces"]}
    assert len(centres) == 12  # one face per tile


def test_real_crowd_beyond_max_faces(server):
    data = crowd(6, 5, 128)
    if data is None:
        pytest.skip("needs 30 photos in ../shared/data/tpdne128 (the shared data set is not next to this checkout)")
    response = requests.post(f"{server.url}/classify", files={"image": ("crowd.jpg", data, "image/jpeg")}, timeout=300)
    assert response.status_code == 200, response.text
    result = response.json()
    check_crowd(result, server.max_faces, 24)
    tiles = [(int((f["box"][0] + f["box"][2]) / 2 // 128), int((f["box"][1] + f["box"][3]) / 2 // 128)) for f in result["faces"]]
    assert len(set(tiles)) == len(tiles)  # no face counted twice


def test_corpus_in_batches_every_file_answered_in_order(server, answers):
    """The whole corpus through /classify_batch, max_batch_files at a time and in a shuffled but fixed order:
    one item per file, in order, each the same answer as the file on its own, and counts that add up."""
    order = ITEMS[1::2] + ITEMS[::2]  # good and bad files side by side
    for start in range(0, len(order), server.max_batch_files):
        chunk = order[start: start + server.max_batch_files]
        files = [("images", (item.name, item.data, item.content_type)) for item in chunk]
        response = requests.post(f"{server.url}/classify_batch", files=files, params={"csv": "true"}, timeout=600)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [entry["file"] for entry in body["results"]] == [item.name for item in chunk]
        assert_summary_adds_up(body)
        assert body["csv"].count("\n") == len(chunk) + 1
        for item, entry in zip(chunk, body["results"]):
            single = answers(item)
            if item.status == 200:
                assert entry["ok"], (item.name, entry["error"])
                assert [face["box"] for face in entry["result"]["faces"]] == [face["box"] for face in single.json()["faces"]]
                assert entry["result"]["fake_probability"] == pytest.approx(single.json()["fake_probability"], abs=1e-5)
            else:
                assert not entry["ok"] and entry["error"]["status"] == item.status, (item.name, entry)
                assert entry["error"]["reason"] == single.json()["reason"]
