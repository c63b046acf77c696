"""`python -m service.cli classify`: the service's answers for a folder, without a server."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image

from service.argv import join_option_values
from service.batch import CSV_COLUMNS
from service.cli import build_parser, main
from service.config import REPO_ROOT, get_settings
from service.schemas import BatchResult
from service_fixtures import ANGLES, SHARED_DATA, encode, gradient, synthetic_face, uncalibrated_card

TTA = ",".join(f"{angle:g}" for angle in ANGLES)  # the server's angles, e.g. -15,0,15


def run_cli(*args: str | Path, max_bytes: int | None = None, **settings: str) -> subprocess.CompletedProcess:
    env = dict(os.environ) | settings
    if max_bytes is not None:
        env["FACECHECK_MAX_BYTES"] = str(max_bytes)
    return subprocess.run([sys.executable, "-m", "service.cli", "classify", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def a_real_photo() -> bytes:
    files = sorted((SHARED_DATA / "utk-real" / "real").glob("*.jpg"))[:1]
    return files[0].read_bytes() if files else encode(synthetic_face(seed=8))


def test_cli_answers_as_the_folder_endpoint_does(server, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    folder = server.data_root / name
    (folder / "sub").mkdir(parents=True)
    face, photo = encode(synthetic_face(seed=7)), a_real_photo()
    (folder / "a-face.jpg").write_bytes(face)
    (folder / "b-ramp.png").write_bytes(encode(gradient(), "PNG"))
    (folder / "c-notes.txt").write_text("notes, not a photo")
    os.mkfifo(folder / "d-pipe.jpg")
    (folder / "sub" / "e-photo.jpg").write_bytes(photo)
    (folder / "sub" / "f-huge.jpg").write_bytes(b"\xff\xd8" + b"\x00" * server.max_bytes)  # over the byte limit
    out = tmp_path / "out"

    served = requests.post(f"{server.url}/classify_folder", json={"folder": name, "recursive": True, "csv": True}, timeout=300)
    assert served.status_code == 200, served.text
    done = run_cli(folder, "--recursive", "--tta", TTA, "--csv", out / "r.csv", "--json", out / "r.json",
                   "--sort", out / "sorted", "--annotate", out / "annotated", max_bytes=server.max_bytes)
    assert done.returncode == 1, done.stderr  # 1: some files could not be classified
    served, local = served.json(), BatchResult.model_validate_json((out / "r.json").read_text()).model_dump(mode="json")

    assert [f"{name}/{item['file']}" for item in local["results"]] == [item["file"] for item in served["results"]]
    assert local["summary"] == served["summary"] == {"files": 6, "real": local["summary"]["real"], "fake": local["summary"]["fake"],
                                                     "uncertain": local["summary"]["uncertain"], "no_face": 1, "errors": 3}
    for mine, theirs in zip(local["results"], served["results"]):
        assert mine["ok"] == theirs["ok"], mine["file"]
        if not mine["ok"]:
            assert (mine["error"]["status"], mine["error"]["reason"]) == (theirs["error"]["status"], theirs["error"]["reason"])
            assert mine["result"] is None and mine["sorted_to"] is None
            continue
        a, b = mine["result"], theirs["result"]
        assert (a["verdict"], a["face_found"], len(a["faces"]), a["model"]) == (b["verdict"], b["face_found"], len(b["faces"]), b["model"])
        assert a["fake_probability"] == pytest.approx(b["fake_probability"], abs=1e-5)
        for fa, fb in zip(a["faces"], b["faces"]):
            assert fa["box"] == pytest.approx(fb["box"], abs=1e-3) and fa["label"] == fb["label"]
            assert fa["tta"].keys() == fb["tta"].keys() and list(fa["tta"].values()) == pytest.approx(list(fb["tta"].values()), abs=1e-5)
        if not a["face_found"]:
            assert list(a["whole_image"].values()) == pytest.approx(list(b["whole_image"].values()), abs=1e-5)
        # --sort: a copy in real/ or fake/; --annotate: the picture, as big as the photo
        assert mine["sorted_to"] == f"{a['verdict']}/{Path(mine['file']).name}"
        assert (out / "sorted" / mine["sorted_to"]).read_bytes() == (folder / mine["file"]).read_bytes()
        with Image.open(out / "annotated" / f"{mine['file']}.png") as drawn, Image.open(folder / mine["file"]) as photo_image:
            assert drawn.format == "PNG" and drawn.size == photo_image.size
    assert sorted(p.relative_to(out / "annotated").as_posix() for p in (out / "annotated").rglob("*.png")) == [
        "a-face.jpg.png", "b-ramp.png.png", "sub/e-photo.jpg.png"]
    by_reason = {item["file"]: item["error"]["reason"] for item in local["results"] if item["error"]}
    assert by_reason == {"c-notes.txt": "not_an_image", "d-pipe.jpg": "special_file", "sub/f-huge.jpg": "too_many_bytes"}

    mine_csv = list(csv.DictReader(io.StringIO((out / "r.csv").read_text())))
    theirs_csv = list(csv.DictReader(io.StringIO(served["csv"])))
    assert list(mine_csv[0]) == list(CSV_COLUMNS) == list(theirs_csv[0])
    for a, b in zip(mine_csv, theirs_csv):
        assert f"{name}/{a['file']}" == b["file"]
        assert float(a["fake_probability"] or "nan") == pytest.approx(float(b["fake_probability"] or "nan"), abs=1e-5, nan_ok=True)
        assert {k: v for k, v in a.items() if k not in ("file", "fake_probability", "sorted_to")} == \
               {k: v for k, v in b.items() if k not in ("file", "fake_probability", "sorted_to")}

    summary = done.stdout.splitlines()
    counts = local["summary"]
    assert (f"6 files: {counts['real']} real, {counts['fake']} fake, {counts['uncertain']} uncertain (1 with no face found: the whole image "
            "was classified), 3 errors") in summary
    for file in by_reason:
        assert any(line.startswith(f"  error: {file}: ") for line in summary), file
    assert "classifying" in done.stderr  # the progress bar


def test_cli_says_uncertain_inside_the_band_and_sorts_it_apart(known, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "face.jpg").write_bytes(known.inside)
    (folder / "ramp.png").write_bytes(known.outside)
    band = ",".join(map(str, known.band))
    done = run_cli(folder, "--sort", tmp_path / "sorted", "--csv", tmp_path / "r.csv", "--tta", TTA, FACECHECK_UNCERTAIN_BAND=band)
    assert done.returncode == 0, done.stderr
    rows = {row["file"]: row for row in csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text()))}
    assert rows["face.jpg"]["verdict"] == "uncertain" and rows["face.jpg"]["sorted_to"] == "uncertain/face.jpg"
    assert (tmp_path / "sorted" / "uncertain" / "face.jpg").read_bytes() == known.inside
    ramp = rows["ramp.png"]["verdict"]
    lines = done.stdout.splitlines()
    assert any(line.startswith("uncertain ") and line.endswith(" face.jpg") for line in lines)
    assert f"2 files: {int(ramp == 'real')} real, {int(ramp == 'fake')} fake, 1 uncertain (1 with no face found: the whole image was classified), 0 errors" in lines
    assert any(line.startswith(f"  uncertain: the fake probability lies in the model's uncertain band [{known.band[0]:.3f}, ") for line in lines)
    off = run_cli(folder, "--tta", TTA, "-q", FACECHECK_UNCERTAIN_BAND="off")
    assert off.returncode == 0 and off.stdout.startswith("2 files: ") and " 0 uncertain " in off.stdout, off.stdout + off.stderr


def test_cli_one_photo_sorts_without_overwriting(tmp_path):
    photo = tmp_path / "in" / "face.jpg"
    photo.parent.mkdir()
    photo.write_bytes(encode(synthetic_face(seed=3)))
    for run in range(2):
        done = run_cli(photo, "--sort", tmp_path / "sorted", "--json", tmp_path / f"r{run}.json", "--tta", "0", "--device", "cpu", "-q")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("1 file: ")
    first, second = (json.loads((tmp_path / f"r{run}.json").read_text())["results"][0] for run in range(2))
    assert first["file"] == second["file"] == "face.jpg" and list(first["result"]["faces"][0]["tta"]) == ["0"]
    assert first["sorted_to"] != second["sorted_to"]
    assert all((tmp_path / "sorted" / item["sorted_to"]).read_bytes() == photo.read_bytes() for item in (first, second))


def test_cli_reports_a_blank_picture_as_an_error_and_sorts_it_nowhere(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "blank.png").write_bytes(encode(Image.new("RGB", (64, 64), (30, 30, 30)), "PNG"))
    (folder / "ramp.png").write_bytes(encode(gradient(), "PNG"))
    done = run_cli(folder, "--sort", tmp_path / "sorted", "--json", tmp_path / "r.json", "--tta", "0", "--device", "cpu", "-q")
    assert done.returncode == 1, done.stderr  # 1: a file could not be classified
    blank, ramp = json.loads((tmp_path / "r.json").read_text())["results"]
    assert (blank["file"], blank["ok"], blank["error"]["status"], blank["error"]["reason"]) == ("blank.png", False, 422, "blank")
    assert blank["sorted_to"] is None and ramp["ok"] and ramp["sorted_to"] is not None


def test_cli_refuses_what_it_cannot_run(tmp_path, capsys):
    assert main(["classify", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["classify", str(tmp_path), "--tta", "-15,left"])
    assert stopped.value.code == 2
    assert "comma-separated degrees" in capsys.readouterr().err


def test_negative_angles_are_values_not_options():
    args = build_parser().parse_args(join_option_values(["classify", "x", "--tta", "-15,0,15", "-r"], ("--tta",)))
    assert args.tta == (-15.0, 0.0, 15.0) and args.recursive
    assert build_parser().parse_args(["classify", "x", "--tta="]).tta == ()
    assert join_option_values(["--tta", "-5", "--tta-sets", "0;-5,5", "--x"], ("--tta", "--tta-sets")) == ["--tta=-5", "--tta-sets=0;-5,5", "--x"]


def test_a_failing_output_is_that_files_error_not_a_crash(tmp_path):
    """What the CLI's --annotate and --sort do per file, through the service's Engine: OSError -> a 500 item."""
    import asyncio

    import numpy as np

    from service.annotate import AnnotationWriter
    from service.engine import Engine, Source
    from service.folders import SortedCopier
    from service.metrics import get_metrics
    from service.pipeline import Pipeline

    class NoFaces:
        def detect(self, image):
            return []

    async def fixed(crops: np.ndarray) -> np.ndarray:
        return np.full(len(crops), 0.2, dtype=np.float32)

    settings = get_settings()
    engine = Engine(Pipeline(uncalibrated_card(), NoFaces(), (0.0,)), fixed, settings.max_bytes, settings.max_pixels, get_metrics())
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    ramp = encode(gradient(), "PNG")
    items = asyncio.run(engine.classify_sources([Source("a.png", lambda: ramp)], SortedCopier(tmp_path / "sorted"),
                                                AnnotationWriter(tmp_path / "blocked")))
    (item,) = items
    assert not item.ok and item.result is not None and item.result.verdict == "real"
    assert (item.error.status, item.error.reason) == (500, "annotate_failed")
    items = asyncio.run(engine.classify_sources([Source("a.png", lambda: ramp)], SortedCopier(tmp_path / "blocked"),
                                                AnnotationWriter(tmp_path / "annotated")))
    assert (items[0].error.status, items[0].error.reason) == (500, "copy_failed") and (tmp_path / "annotated" / "a.png.png").is_file()


def test_annotated_pictures_never_follow_a_link_out_of_their_folder(tmp_path):
    """--annotate writes sub/a.jpg's picture to OUTDIR/sub/a.jpg.png: a link in place of sub/ is refused, one in place of
    the picture is replaced, and nothing is written outside OUTDIR either way."""
    outside = tmp_path / "outside"
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "a.jpg").write_bytes(encode(synthetic_face(seed=3)))
    (photos / "b.jpg").write_bytes(encode(synthetic_face(seed=5)))
    annotated = tmp_path / "annotated"
    annotated.mkdir()
    outside.mkdir()
    (annotated / "sub").symlink_to(outside, target_is_directory=True)
    (annotated / "b.jpg.png").symlink_to(outside / "planted.png")
    done = run_cli(photos, "--recursive", "--annotate", annotated, "--json", tmp_path / "out.json", "--tta", TTA)
    assert done.returncode == 1, done.stdout + done.stderr
    items = {item["file"]: item for item in json.loads((tmp_path / "out.json").read_text())["results"]}
    assert (items["sub/a.jpg"]["error"]["status"], items["sub/a.jpg"]["error"]["reason"]) == (403, "path_outside_root")
    assert items["b.jpg"]["ok"] and not (annotated / "b.jpg.png").is_symlink()
    assert (annotated / "b.jpg.png").read_bytes().startswith(b"\x89PNG")
    assert list(outside.iterdir()) == []


def test_cli_opens_only_the_formats_FACECHECK_FORMATS_allows(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    face = synthetic_face(seed=3)
    (folder / "face.jpg").write_bytes(encode(face))
    (folder / "face.webp").write_bytes(encode(face, "WEBP"))
    done = run_cli(folder, "--json", tmp_path / "r.json", "--tta", "0", "--device", "cpu", "-q", FACECHECK_FORMATS="jpeg")
    assert done.returncode == 1, done.stderr  # 1: a file could not be classified
    items = {item["file"]: item for item in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert items["face.jpg"]["ok"] and not items["face.webp"]["ok"]
    assert items["face.webp"]["error"]["status"] == 400 and "supported format: JPEG (" in items["face.webp"]["error"]["error"]
    refused = run_cli(folder, "-q", FACECHECK_FORMATS="jpeg,psd")
    assert refused.returncode == 2 and refused.stderr.startswith("facecheck: error: FACECHECK_FORMATS: PSD: choose among"), refused.stderr
