"""The Ray engine against the in-process CLI on the same folder and cores, side by side in one run.

    .venv/bin/python -m loadtests.ray_benchmark                  # about 8 minutes on 2 CPU cores
    .venv/bin/python -m loadtests.ray_benchmark --photos 2000 --rounds 3

The folder: --photos real photos from ../shared/data, as many from each source as they are (copied into a
temporary folder, never into the repository). Each row is the `facecheck classify` command on it, timed
from start to exit:
- in-process: `facecheck classify DIR` (the Engine in one process, ONNX Runtime and MTCNN threads on every core);
- ray, 2 CPU workers: `--engine ray --cpus 2`, a local Ray started by the command (2 prepare tasks at once,
  the classifier actor sharing the cores);
- ray, 1 CPU worker: the same with `--workers 1`.
The rows run in turn, in a different order each round, so a drift of the shared machine falls on all of
them; the ratios are of the medians. Each row also gives the CPU time of the command's whole process
tree (Ray's daemons and workers included), which other work on a shared machine does not inflate as it
does wall time, and Ray's rows the job alone (Ray Data's "execution finished in"), without the start of
Ray and of its workers. Last, the stages: the same job once more in this process, and Ray Data's own
CPU time of each stage per photo, which is what decides how many CPUs a GPU keeps busy. Writes
ray-benchmark.json and ray-benchmark.md into loadtests/reports/ray-benchmark-<timestamp>/.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.benchmark import machine
from loadtests.server import REPO

SHARED_DATA = REPO.parent / "shared" / "data"
SOURCES = ("utk-real/real", "lfw-real/real", "tpdne128/fake", "tpdne128/real", "rff/fake", "rff/real", "sdfd-sd21/fake")
ROWS = {"in-process": [], "ray, 2 CPU workers": ["--engine", "ray", "--cpus", "2"],
        "ray, 1 CPU worker": ["--engine", "ray", "--cpus", "2", "--workers", "1"]}
EXECUTION = re.compile(r"execution finished in ([0-9.]+) seconds")


def make_folder(target: Path, photos: int) -> int:
    per_source = -(-photos // len(SOURCES))
    files = [p for source in SOURCES for p in sorted((SHARED_DATA / source).glob("*.jpg"))[:per_source]][:photos]
    target.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, target / f"{path.parent.parent.name}-{path.parent.name}-{path.name}")
    return len(files)


def timed(name: str, folder: Path, work: Path) -> dict:
    """One row's command on the folder: wall seconds, and Ray Data's own time for the job where it ran one."""
    out = work / re.sub(r"\W+", "-", name)
    shutil.rmtree(out, ignore_errors=True)
    extra = ["--parquet", str(out)] if "--engine" in ROWS[name] else []
    command = [sys.executable, "-m", "service.cli", "classify", str(folder), "-q", "--json", str(work / "r.json"), *ROWS[name], *extra]
    logs = work / "log.txt"
    with open(logs, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        cpu = tree_cpu_seconds(process)
        wall = time.perf_counter() - started
    output = logs.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({process.returncode}):\n{output[-3000:]}")
    job = EXECUTION.findall(output)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 1), "job_s": round(float(job[-1]), 2) if job else None,
            "verdicts": json.loads((work / "r.json").read_text())["summary"]}


def tree_cpu_seconds(process: subprocess.Popen, every_s: float = 0.2) -> float:
    """Waits for `process`; the CPU time (user + system) that it and every process under it used, as last
    seen every `every_s` (Ray's daemons and workers are its descendants). The machine is shared: CPU
    time is what the work cost, whatever else ran beside it."""
    import psutil

    seen: dict[tuple[int, float], float] = {}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        for proc in tree:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    seen[proc.pid, proc.create_time()] = times.user + times.system
            except psutil.Error:
                continue
        time.sleep(every_s)
    return sum(seen.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.ray_benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=1000, help="photos in the folder")
    p.add_argument("--rounds", type=int, default=2, help="runs of every row, in turn")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/ray-benchmark-<timestamp>)")
    args = p.parse_args(argv)
    if not SHARED_DATA.is_dir():
        print(f"needs the photos of {SHARED_DATA}", file=sys.stderr)
        return 2
    out = args.out or REPO / "loadtests" / "reports" / time.strftime("ray-benchmark-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {name: [] for name in ROWS}
    with tempfile.TemporaryDirectory(prefix="ray-benchmark-") as tmp:
        folder = Path(tmp) / "photos"
        photos = make_folder(folder, args.photos)
        for round_ in range(args.rounds):
            names = list(ROWS) if round_ % 2 == 0 else list(reversed(ROWS))
            for name in names:
                runs[name].append(timed(name, folder, Path(tmp)))
                print(f"  round {round_ + 1} {name:22} {runs[name][-1]}", flush=True)
        stages = stage_costs(folder, photos)
    summaries = summarise(runs, photos)
    if any(r["verdicts"] != runs["in-process"][0]["verdicts"] for rs in runs.values() for r in rs):
        raise RuntimeError("the rows disagree on the verdicts: " + json.dumps({n: [r["verdicts"] for r in rs] for n, rs in runs.items()}))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "photos": photos, "rounds": args.rounds,
              "command": "python -m loadtests.ray_benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rows": summaries, "ratios": ratios(summaries, photos), "stage_cpu_ms_per_photo": stages}
    (out / "ray-benchmark.json").write_text(json.dumps(report, indent=1))
    (out / "ray-benchmark.md").write_text(markdown(report))
    print(markdown(report))
    print(f"reports in {out}")
    return 0


STAGE = re.compile(r"Operator \d+ (?:MapBatches\()?(\w+)\)?:.*?Remote cpu time: .*?, ([0-9.]+)(us|ms|s) total", re.S)


def stage_costs(folder: Path, photos: int) -> dict[str, float]:
    """CPU milliseconds per photo of each stage of the job, from Ray Data's statistics of one run in this process."""
    import ray

    from service.cli import find_files
    from service.config import get_settings
    from service.faces import configured_detector
    from service.onnx_model import read_card
    from service.ray_engine import JobConfig, RayOptions, dataset, from_folder

    settings = get_settings()
    card = read_card(settings.model)
    config = JobConfig(model=str(settings.model), angles=settings.angles_for(card), band=settings.band_for(card), max_bytes=settings.max_bytes,
                       max_pixels=settings.max_pixels, max_faces=settings.max_faces, detector=configured_detector(),
                       orientation_model=str(settings.orientation_path) if settings.orientation_path else None)
    try:
        done = dataset(from_folder(find_files(folder, False)), config, RayOptions(cpus=2)).materialize()
        unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
        return {name: round(float(value) * unit[scale] / photos, 2) for name, value, scale in STAGE.findall(done.stats())}
    finally:
        ray.shutdown()


def summarise(runs: dict[str, list[dict]], photos: int) -> dict[str, dict]:
    def median(rs: list[dict], key: str) -> float | None:
        return statistics.median(r[key] for r in rs) if rs[0][key] is not None else None

    return {name: {"wall_s": median(rs, "wall_s"), "photos_per_s": photos / median(rs, "wall_s"), "job_s": median(rs, "job_s"),
                   "cpu_s": median(rs, "cpu_s"), "cpu_ms_per_photo": 1000.0 * median(rs, "cpu_s") / photos, "runs": rs}
            for name, rs in runs.items()}


def ratios(rows: dict[str, dict], photos: int) -> list[tuple[str, float]]:
    """Photos per second of one row over another's (wall time, start-up included), and of Ray's job alone."""
    wall = {name: row["wall_s"] for name, row in rows.items()}
    ray2, ray1, local = wall["ray, 2 CPU workers"], wall["ray, 1 CPU worker"], wall["in-process"]
    job2 = rows["ray, 2 CPU workers"]["job_s"]
    return [(f"ray, 2 CPU workers / in-process, {photos} photos, the whole command (target 0.8x)", round(local / ray2, 2)),
            ("ray, 2 CPU workers, the job alone (without Ray's start) / in-process, the whole command", round(local / job2, 2)),
            ("ray: 2 / 1 CPU workers, the whole command", round(ray1 / ray2, 2)),
            ("ray: 2 / 1 CPU workers, the job alone", round(rows["ray, 1 CPU worker"]["job_s"] / job2, 2)),
            ("CPU time per photo: in-process / ray, 2 CPU workers (Ray's start and daemons included)",
             round(rows["in-process"]["cpu_s"] / rows["ray, 2 CPU workers"]["cpu_s"], 2))]


def markdown(report: dict) -> str:
    lines = [f"Run {report['date']} on {report['machine']}: `{report['command'].strip()}`",
             f"{report['photos']} photos, {report['rounds']} rounds; medians.", "", "| comparison | ratio |", "|---|---:|"]
    lines += [f"| {label} | {value:.2f}x |" for label, value in report["ratios"]]
    lines += ["", "| stage | CPU ms per photo |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in report["stage_cpu_ms_per_photo"].items()]
    lines += ["", "| row | whole command, s | photos/s | Ray's job alone, s | CPU ms per photo | every run's whole command, s |",
              "|---|---:|---:|---:|---:|---|"]
    for name, row in report["rows"].items():
        job = f"{row['job_s']:.1f}" if row["job_s"] is not None else ""
        each = ", ".join(f"{run['wall_s']:.1f}" for run in row["runs"])
        lines.append(f"| {name} | {row['wall_s']:.1f} | {row['photos_per_s']:.1f} | {job} | {row['cpu_ms_per_photo']:.0f} | {each} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
