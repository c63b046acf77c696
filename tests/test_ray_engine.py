"""`facecheck classify --engine ray`: a local Ray with 2 CPUs over real photos from ../shared/data, against
the in-process engine on the same files; a run whose workers are killed; a re-run that resumes."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from service.batch import CSV_COLUMNS
from service.config import REPO_ROOT
from service.folders import safe_name
from service.schemas import BatchResult
from service_fixtures import ANGLES, SHARED_DATA, encode, gradient

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'; make setup installs it with the dev extra)")
import psutil  # noqa: E402 - Ray's dependency
import pyarrow.parquet as pq  # noqa: E402 - Ray Data's dependency

pytestmark = [pytest.mark.slow, pytest.mark.data]
TTA = ",".join(f"{angle:g}" for angle in ANGLES)
SOURCES = ("utk-real/real", "lfw-real/real", "tpdne128/fake", "tpdne128/real", "rff/fake", "rff/real", "sdfd-sd21/fake")
# Worker processes as `ps` names them: a prepare task while it runs, and the classifier actor.
PREPARE_WORKER = "MapBatches(prepare_batch)"
CLASSIFIER_ACTOR = "MapWorker(MapBatches(Classifier))"


def photos(per_source: int) -> list[Path]:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the Ray engine is tested on real photos from {SHARED_DATA}, which is absent from this checkout")
    return [path for source in SOURCES for path in sorted((SHARED_DATA / source).glob("*.jpg"))[:per_source]]


def fill(folder: Path, files: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, folder / f"{path.parent.parent.name}-{path.parent.name}-{path.name}")


def cli(*args: str | Path, engine: str = "ray") -> list[str]:
    command = [sys.executable, "-m", "service.cli", "classify", "--tta", TTA, *map(str, args)]
    return command + (["--engine", "ray", "--cpus", "2"] if engine == "ray" else [])


def run(*args: str | Path, engine: str = "ray") -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args, engine=engine), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def parquet_files(out: Path) -> list[str]:
    return sorted(pq.read_table(out, columns=["file"])["file"].to_pylist())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """42 photos (6 from each source, 2 of them in a subfolder) and what a backlog also holds: a text
    file, a truncated JPEG, a photo without a face, a photo on its side and a FIFO."""
    files = photos(6)
    folder = tmp_path_factory.mktemp("ray") / "photos"
    fill(folder, files[2:])
    fill(folder / "sub", files[:2])
    (folder / "notes.txt").write_text("not a photo")
    (folder / "truncated.jpg").write_bytes(files[0].read_bytes()[:2000])
    (folder / "ramp.png").write_bytes(encode(gradient(), "PNG"))
    (folder / "sideways.png").write_bytes(encode(Image.open(files[-1]).convert("RGB").transpose(Image.Transpose.ROTATE_90), "PNG"))
    os.mkfifo(folder / "pipe.jpg")
    return folder


@pytest.fixture(scope="module")
def in_process(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("in-process") / "r.json"
    done = run(folder, "-r", "-q", "--json", out, engine="local")
    assert done.returncode == 1, done.stderr
    return {item["file"]: item for item in json.loads(out.read_text())["results"]}


def test_ray_answers_as_the_in_process_engine_with_workers_killed_mid_run(folder, in_process, tmp_path):
    out = tmp_path / "out"
    job = subprocess.Popen(cli(folder, "-r", "--parquet", out / "rows", "--csv", out / "r.csv", "--json", out / "r.json",
                               "--sort", out / "sorted", "--annotate", out / "annotated", "--workers", "1"),
                           cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = kill_workers(job, [PREPARE_WORKER, CLASSIFIER_ACTOR])
    stdout, stderr = job.communicate(timeout=600)
    assert killed == [PREPARE_WORKER, CLASSIFIER_ACTOR], f"the run ended before a worker could be killed:\n{stderr[-3000:]}"
    assert job.returncode == 1, stderr[-3000:]  # 1: some files are errors

    expected = sorted(in_process)
    assert parquet_files(out / "rows") == expected  # every file once, a result or an error
    answer = BatchResult.model_validate_json((out / "r.json").read_text()).model_dump(mode="json")
    assert [item["file"] for item in answer["results"]] == expected
    for item in answer["results"]:
        theirs = in_process[item["file"]]
        if theirs["error"] is not None:
            assert (item["error"]["status"], item["error"]["reason"]) == (theirs["error"]["status"], theirs["error"]["reason"])
            continue
        mine, reference = item["result"], theirs["result"]
        assert item["ok"], item
        assert (mine["file"], mine["verdict"], mine["face_found"], len(mine["faces"]), mine["turned"], mine["model"]) == \
               (reference["file"], reference["verdict"], reference["face_found"], len(reference["faces"]), reference["turned"], reference["model"]), item["file"]
        assert mine["fake_probability"] == pytest.approx(reference["fake_probability"], abs=1e-5), item["file"]
        for face, theirs_face in zip(mine["faces"], reference["faces"]):
            assert face["box"] == pytest.approx(theirs_face["box"], abs=1e-3) and face["label"] == theirs_face["label"]
            assert face["tta"] == pytest.approx(theirs_face["tta"], abs=1e-5)
        assert item["sorted_to"] == f"{mine['verdict']}/{safe_name(item['file'])}"
        assert (out / "sorted" / item["sorted_to"]).read_bytes() == (folder / item["file"]).read_bytes()
        assert (out / "annotated" / f"{item['file']}.png").is_file()
    reasons = {item["file"]: item["error"]["reason"] for item in answer["results"] if item["error"]}
    assert reasons == {"notes.txt": "not_an_image", "truncated.jpg": "corrupt", "pipe.jpg": "special_file"}
    assert not in_process["ramp.png"]["result"]["face_found"] and answer["summary"]["no_face"] >= 1
    assert in_process["sideways.png"]["result"]["turned"] == 270

    rows = list(csv.DictReader(io.StringIO((out / "r.csv").read_text())))
    assert list(rows[0]) == list(CSV_COLUMNS) and [row["file"] for row in rows] == expected
    s = answer["summary"]
    assert s["files"] == len(expected) == s["real"] + s["fake"] + s["uncertain"] + s["errors"] and s["errors"] == 3
    assert f"ray: {len(expected)} files classified now, 0 already done under {out / 'rows'}" in stdout.splitlines()
    assert any(line.startswith(f"{len(expected)} files: {s['real']} real, {s['fake']} fake, {s['uncertain']} uncertain") for line in stdout.splitlines())
    assert "Running Dataset" in stderr  # Ray Data's progress


def kill_workers(job: subprocess.Popen, names: list[str]) -> list[str]:
    """Kills (SIGKILL) one of the job's Ray worker processes of each name in turn, as soon as it runs; the killed names."""
    killed: list[str] = []
    while job.poll() is None and len(killed) < len(names):
        for process in psutil.Process(job.pid).children(recursive=True):
            try:
                running = names[len(killed)] in " ".join(process.cmdline())
            except psutil.Error:
                continue
            if running and job.poll() is None:
                process.kill()
                killed.append(names[len(killed)])
                break
        time.sleep(0.02)
    return killed


def test_a_rerun_skips_what_is_done_and_redoes_a_broken_file(tmp_path):
    files = photos(2)
    folder, out = tmp_path / "photos", tmp_path / "rows"
    fill(folder, files[:4])
    uri = folder.as_uri()  # file://: the listing and reads go through pyarrow's filesystems, as for s3:// or gs://

    first = run(uri, "--parquet", out, "-q")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ray: 4 files classified now, 0 already done" in first.stdout
    (part,) = out.glob("*.parquet")
    part.write_bytes(part.read_bytes()[:200])  # what a run killed while writing leaves

    fill(folder, files[4:7])
    second = run(uri, "--parquet", out, "-q", "--json", tmp_path / "r.json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ray: 7 files classified now, 0 already done" in second.stdout and "1 unreadable Parquet files" in second.stdout
    names = sorted(p.name for p in folder.iterdir())
    assert parquet_files(out) == names
    parts = {p: p.read_bytes() for p in out.glob("*.parquet")}

    fill(folder, files[7:8])
    third = run(uri, "--parquet", out, "-q", "--json", tmp_path / "r.json")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "ray: 1 file classified now, 7 already done" in third.stdout
    assert all(p.read_bytes() == data for p, data in parts.items())  # the rows done stay as they were
    answer = json.loads((tmp_path / "r.json").read_text())
    assert [item["file"] for item in answer["results"]] == parquet_files(out) == sorted(p.name for p in folder.iterdir())

    other_angles = "0" if tuple(ANGLES) != (0.0,) else "-15,0,15"  # not the rotations the rows were made with
    other = run(uri, "--parquet", out, "-q", "--tta", other_angles)
    assert other.returncode == 2 and "holds rows made with" in other.stderr


def test_the_service_does_not_import_ray():
    code = ("import sys, service.service, service.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'pyarrow', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
