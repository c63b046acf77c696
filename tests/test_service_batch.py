"""POST /classify_batch and /classify_folder against the real server."""
from __future__ import annotations

import csv
import io
import os
import uuid

import pytest
import requests

from service_fixtures import assert_summary_adds_up, encode, gradient, synthetic_face

FACE = encode(synthetic_face(seed=7))
RAMP = encode(gradient(), "PNG")


def folder_request(server, folder, **options) -> requests.Response:
    return requests.post(f"{server.url}/classify_folder", json={"folder": folder, **options}, timeout=300)


@pytest.fixture()
def folder(server):
    """A fresh folder under the data root: (name relative to the root, path)."""
    name = f"case-{uuid.uuid4().hex[:8]}"
    path = server.data_root / name
    path.mkdir()
    return name, path


def test_batch_upload_one_result_per_file_in_order(server):
    files = [("images", ("a-face.jpg", FACE, "image/jpeg")), ("images", ("b-text.jpg", b"not an image", "image/jpeg")),
             ("images", ("c-ramp.png", RAMP, "image/png")), ("images", ("d-cut.jpg", FACE[:len(FACE) // 2], "image/jpeg")),
             ("images", ("e-empty.jpg", b"", "image/jpeg"))]
    response = requests.post(f"{server.url}/classify_batch", files=files, data={"csv": "true"}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["file"] for item in body["results"]] == ["a-face.jpg", "b-text.jpg", "c-ramp.png", "d-cut.jpg", "e-empty.jpg"]
    assert [item["ok"] for item in body["results"]] == [True, False, True, False, False]
    assert [item["error"]["status"] for item in body["results"] if item["error"]] == [400, 400, 400]
    assert [item["error"]["reason"] for item in body["results"] if item["error"]] == ["not_an_image", "corrupt", "empty"]
    assert body["results"][0]["result"]["face_found"] and not body["results"][2]["result"]["face_found"]
    assert_summary_adds_up(body)
    assert body["summary"]["errors"] == 3 and body["summary"]["no_face"] == 1
    rows = list(csv.DictReader(io.StringIO(body["csv"])))
    assert [row["file"] for row in rows] == [item["file"] for item in body["results"]]
    assert float(rows[0]["fake_probability"]) == body["results"][0]["result"]["fake_probability"]
    assert rows[1]["reason"] == "not_an_image" and rows[1]["ok"] == "False"


def test_batch_too_many_files_is_413(server):
    files = [("images", (f"{i}.jpg", FACE, "image/jpeg")) for i in range(server.max_batch_files + 1)]
    response = requests.post(f"{server.url}/classify_batch", files=files, timeout=120)
    assert response.status_code == 413 and response.json()["reason"] == "too_many_files"


def test_batch_needs_images(server):
    response = requests.post(f"{server.url}/classify_batch", files={"image": ("a.jpg", FACE, "image/jpeg")}, timeout=120)
    assert response.status_code == 422 and response.json()["reason"] == "bad_field"
    response = requests.post(f"{server.url}/classify_batch", data=FACE, headers={"Content-Type": "image/jpeg"}, timeout=120)
    assert response.status_code == 415


def test_folder_results_sorted_by_name_with_errors(server, folder):
    name, path = folder
    (path / "b.jpg").write_bytes(FACE)
    (path / "a.png").write_bytes(RAMP)
    (path / "c.txt").write_text("notes, not a photo")
    (path / "sub").mkdir()
    (path / "sub" / "d.jpg").write_bytes(FACE)
    flat = folder_request(server, name)
    assert flat.status_code == 200, flat.text
    assert [item["file"] for item in flat.json()["results"]] == [f"{name}/a.png", f"{name}/b.jpg", f"{name}/c.txt"]
    assert_summary_adds_up(flat.json())
    assert flat.json()["summary"]["errors"] == 1 and flat.json()["results"][2]["error"]["reason"] == "not_an_image"
    deep = folder_request(server, name, recursive=True, csv=True)
    assert [item["file"] for item in deep.json()["results"]] == [f"{name}/a.png", f"{name}/b.jpg", f"{name}/c.txt", f"{name}/sub/d.jpg"]
    assert_summary_adds_up(deep.json())
    assert deep.json()["csv"].count("\n") == 5


def test_folder_sorting_copies_never_overwrite(server, folder):
    name, path = folder
    (path / "face.jpg").write_bytes(FACE)
    (path / "ramp.png").write_bytes(RAMP)
    (path / "bad.jpg").write_bytes(b"nope")
    first = folder_request(server, name, sort=True).json()
    second = folder_request(server, name, sort=True).json()
    for body in (first, second):
        assert_summary_adds_up(body)
    by_file = {item["file"]: item for item in first["results"]}
    assert by_file[f"{name}/bad.jpg"]["sorted_to"] is None
    for file, source in ((f"{name}/face.jpg", FACE), (f"{name}/ramp.png", RAMP)):
        item = by_file[file]
        label = item["result"]["verdict"]
        assert item["sorted_to"].startswith(f"{label}/")
        assert (server.sorted_root / item["sorted_to"]).read_bytes() == source
    again = {item["file"]: item["sorted_to"] for item in second["results"]}
    for file, item in by_file.items():
        if item["sorted_to"]:
            assert again[file] != item["sorted_to"]  # a second copy gets a suffix
            assert (server.sorted_root / item["sorted_to"]).exists() and (server.sorted_root / again[file]).exists()


def test_batch_upload_sorting_sanitises_names(server):
    files = [("images", ("../../evil.jpg", FACE, "image/jpeg"))]
    body = requests.post(f"{server.url}/classify_batch", files=files, params={"sort": "true"}, timeout=120).json()
    sorted_to = body["results"][0]["sorted_to"]
    assert sorted_to.split("/")[0] == body["results"][0]["result"]["verdict"] and ".." not in sorted_to
    assert (server.sorted_root / sorted_to).read_bytes() == FACE


@pytest.mark.parametrize("bad", ["..", "../..", "a/../../etc", "/etc", "/", "//etc"])
def test_folder_outside_the_root_is_403(server, bad):
    response = folder_request(server, bad)
    assert response.status_code == 403, response.text
    assert response.json()["reason"] == "path_outside_root"


def test_folder_symlinks_out_are_403(server, folder, tmp_path):
    name, path = folder
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(FACE)
    (path / "escape").symlink_to(outside)
    response = folder_request(server, f"{name}/escape")
    assert response.status_code == 403 and response.json()["reason"] == "path_outside_root"
    (path / "inside").mkdir()
    (path / "inside" / "leak.jpg").symlink_to(outside / "secret.jpg")
    (path / "inside" / "ok.jpg").write_bytes(FACE)
    body = folder_request(server, f"{name}/inside").json()
    by_file = {item["file"]: item for item in body["results"]}
    assert by_file[f"{name}/inside/leak.jpg"]["error"]["status"] == 403
    assert by_file[f"{name}/inside/ok.jpg"]["ok"]
    assert_summary_adds_up(body)


def test_special_files_are_refused_not_read(server, folder):
    name, path = folder
    os.mkfifo(path / "pipe.jpg")
    (path / "photo.jpg").write_bytes(FACE)
    (path / "null.jpg").symlink_to("/dev/null")
    body = folder_request(server, name).json()  # a FIFO that was opened would hang this request
    by_file = {item["file"]: item for item in body["results"]}
    assert by_file[f"{name}/pipe.jpg"]["error"]["status"] == 403
    assert by_file[f"{name}/null.jpg"]["error"]["status"] == 403
    assert by_file[f"{name}/photo.jpg"]["ok"]
    os.mkfifo(path / "fifo-folder")
    response = folder_request(server, f"{name}/fifo-folder")
    assert response.status_code == 403 and response.json()["reason"] == "special_file"


def test_missing_folder_is_404(server):
    response = folder_request(server, "no/such/folder")
    assert response.status_code == 404 and response.json()["reason"] == "folder_not_found"


def test_folder_with_too_many_files_is_413(server, folder):
    name, path = folder
    for index in range(server.max_batch_files + 1):
        (path / f"{index}.jpg").write_bytes(b"x")
    response = folder_request(server, name)
    assert response.status_code == 413 and response.json()["reason"] == "too_many_files"


@pytest.mark.parametrize(("body", "status"), [
    ({}, 422), ({"folder": 3}, 422), ({"folder": "x", "recursive": "sometimes"}, 422),
    ({"folder": "x", "recursve": True}, 422), ("not json", 400),
])
def test_bad_folder_requests(server, body, status):
    if isinstance(body, str):
        response = requests.post(f"{server.url}/classify_folder", data=body, headers={"Content-Type": "application/json"}, timeout=120)
    else:
        response = requests.post(f"{server.url}/classify_folder", json=body, timeout=120)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "status", "reason"}
