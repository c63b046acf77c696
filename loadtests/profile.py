"""Where a photo's time goes: the service against the in-process pipeline, under the benchmark's load.

    .venv/bin/pip install py-spy                      # optional: the per-stage split of each process
    .venv/bin/python -m loadtests.profile             # about 3 minutes on 2 CPU cores

Runs the in-process Engine, then a real `bentoml serve` with its defaults, each with --clients clients
for --seconds on the benchmark's photos. For each process it counts CPU time per photo answered
(psutil), and, where py-spy is installed, runs the row a second time while py-spy samples its Python
threads, and sorts the samples into stages (decode, detection, crops, ONNX Runtime, HTTP and framework):
the samplers share the cores, so the first, unsampled window gives the photos per second and CPU.
A last window per row sends a blank picture, refused as soon as it is decoded, for what the way in and
out of the service costs a request on its own. A third row runs the in-process pipeline in as many
processes as the service has API workers, side by side: what the cores do without the service's way in
and out (photos per second and CPU only).
Writes profile.json and profile.md into loadtests/reports/profile-<timestamp>/, with py-spy's flame
graphs (SVG) beside them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import psutil

from loadtests.benchmark import Run, engine_run, http_run, server_env
from loadtests.images import blank_payload, single_face_payloads
from loadtests.server import REPO, running_server, serve_process

# The first stage whose marker appears in a sampled stack (innermost frame last) takes the sample.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime (classifier)", ("predict_crops", "onnx_model.py")),
    ("face detection", ("mtcnn.py", "faces.py:detect", "detect (service/faces.py")),
    ("crops and TTA rotations", ("preprocess.py", "pipeline.py")),
    ("decode", ("imaging.py",)),
    # "(service/": our package's frames, not BentoML's own _bentoml_impl/worker/service.py (its event loop)
    ("request parsing and answer (ours)", ("(service/uploads.py", "(service/schemas.py", "(service/engine.py", "(service/service.py")),
]
OTHER = "HTTP, serialization, BentoML and the event loop"
LOAD_GENERATOR = "load-generator"


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for name, markers in STAGES:
        if any(marker in frame for frame in frames for marker in markers):
            return name
    return OTHER


def stages(raw: Path) -> dict[str, int]:
    """Samples per stage from py-spy's collapsed-stack output ("frame;frame;... count" per line)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack)] += int(count)
    return dict(counts)


def py_spy() -> Path | None:
    spy = Path(shutil.which("py-spy") or Path(sys.executable).parent / "py-spy")
    return spy if spy.exists() else None


@contextlib.contextmanager
def sampled(spy: Path, process: psutil.Process, out: Path, seconds: float) -> Iterator[None]:
    """py-spy records `process` for `seconds` (raw stacks and a flame graph) while the block runs."""
    procs = [subprocess.Popen([str(spy), "record", "--pid", str(process.pid), "--duration", str(int(seconds)), "--rate", "50", "--nonblocking",
                               "--format", fmt, "--output", str(out.with_suffix(suffix))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for fmt, suffix in (("raw", ".txt"), ("flamegraph", ".svg"))]
    try:
        yield
    finally:
        for proc in procs:
            proc.wait(timeout=seconds + 60)


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU of a process and its threads (ONNX Runtime's pools included)."""
    times = process.cpu_times()
    return times.user + times.system


Measure = Callable[[Callable[[], None]], Run]  # runs the load, calling its argument as the measured window starts


def counted(processes: dict[str, psutil.Process], run: Measure) -> tuple[Run, dict[str, float]]:
    """`run`, and each process's CPU ms per image answered, counted from the start of its measured window."""
    before: dict[str, float] = {}
    result = run(lambda: before.update({name: cpu_seconds(p) for name, p in processes.items()}))
    return result, {name: round((cpu_seconds(p) - before[name]) * 1000.0 / max(1, result.images), 2) for name, p in processes.items()}


def measured(processes: dict[str, psutil.Process], run: Measure, out: Path, seconds: float) -> tuple[Run, dict[str, dict]]:
    """`run` while each process's CPU is counted: photos per second and CPU ms per photo. Then, where py-spy
    is installed, `run` again while it samples each process, for the stage shares alone: its samplers take
    a share of the same cores, so a sampled window's throughput and CPU are not the service's."""
    result, cpu_ms = counted(processes, run)
    report = {name: {"cpu_ms_per_photo": ms, "stages": {}} for name, ms in cpu_ms.items()}
    spy = py_spy()
    if spy is not None:
        with contextlib.ExitStack() as stack:
            for name, process in processes.items():
                stack.enter_context(sampled(spy, process, out / name, seconds))
            run(lambda: None)
        for name in processes:
            report[name]["stages"] = stages(out / f"{name}.txt") if (out / f"{name}.txt").exists() else {}
    return result, report


def server_processes(url: str) -> dict[str, psutil.Process]:
    """The server's worker processes by service, numbered where a service has several."""
    found: dict[str, psutil.Process] = {}
    for child in serve_process(url).children():
        line = " ".join(child.cmdline())
        if "--service-name" in line:
            service = line.split("--service-name ", 1)[1].split()[0]
            found[f"{service}-{sum(k.startswith(service) for k in found) + 1}"] = child
    return found


BLANK_SECONDS = 5.0


def in_process(payloads, clients: int, seconds: float, out: Path) -> tuple[Run, dict[str, dict], float]:
    """The in-process row, and its CPU ms per call for a blank picture."""
    out.mkdir(exist_ok=True)
    device = os.environ.get("FACECHECK_DEVICE", "auto")

    def run(on_start: Callable[[], None]) -> Run:
        return engine_run(None, device, payloads, clients, seconds, f"in-process, {clients} clients", on_start=on_start)

    def blank(on_start: Callable[[], None]) -> Run:
        return engine_run(None, device, [blank_payload()], clients, BLANK_SECONDS, "in-process, blank", on_start=on_start)

    # CPU is counted from the measured window on, but py-spy samples this process from outside, so the
    # engine's loading and warm-up calls run inside its sampled window: it samples for that much longer.
    result, report = measured({"in-process": psutil.Process()}, run, out, seconds + 10)
    return result, report, counted({"in-process": psutil.Process()}, blank)[1]["in-process"]


def side_by_side(payloads, clients: int, seconds: float) -> tuple[Run, dict[str, dict], None]:
    """The in-process pipeline in as many processes as the service has API workers, at once, the clients
    shared out and each classifier given the threads an API worker's gets: the service without its way in
    and out, and what the cores can do."""
    from service.config import get_settings

    settings = get_settings()
    count = settings.api_workers
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(count), context.Queue()
    shares = [clients // count + (i < clients % count) for i in range(count)]
    children = [context.Process(target=pipeline_process, args=(barrier, results, payloads, share, seconds, settings.classifier_cpu_threads))
                for share in shares]
    for child in children:
        child.start()
    counts = [results.get(timeout=seconds + 600) for _ in children]
    for child in children:
        child.join()
    run = Run(f"in-process, {count} processes side by side", clients, images=sum(images for images, _, _ in counts),
              seconds=max(took for _, took, _ in counts))
    # Per photo answered by all of them, as the service's API workers' rows count.
    return run, {f"process {i + 1}": {"cpu_ms_per_photo": round(cpu * 1000.0 / max(1, run.images), 1), "stages": {}}
                 for i, (_, _, cpu) in enumerate(counts)}, None


def pipeline_process(barrier, results, payloads, clients: int, seconds: float, threads: int) -> None:
    """One of side_by_side's processes: puts (photos answered, seconds, CPU seconds) of its measured window."""
    me, before = psutil.Process(), []

    def on_start() -> None:
        barrier.wait()
        before.append(cpu_seconds(me))

    run = engine_run(None, os.environ.get("FACECHECK_DEVICE", "auto"), payloads, clients, seconds, "side by side", on_start=on_start,
                     classifier_threads=threads)
    results.put((run.images, run.seconds, cpu_seconds(me) - before[0]))


def through_service(payloads, clients: int, seconds: float, out: Path, env: dict[str, str]) -> tuple[Run, dict[str, dict], float]:
    """The service row, and its API workers' CPU ms per request for a blank picture."""
    out.mkdir(exist_ok=True)
    with running_server(env, log_path=out / "server.log") as url:
        http_run(url, payloads, clients, 3, "warm-up")
        workers = server_processes(url)
        # The clients run in this process and share the cores with the server; the in-process row pays none of theirs.
        processes = {**workers, LOAD_GENERATOR: psutil.Process()}

        def run(on_start: Callable[[], None]) -> Run:
            on_start()
            return http_run(url, payloads, clients, seconds, f"service, {clients} clients")

        def blank(on_start: Callable[[], None]) -> Run:
            on_start()
            return http_run(url, [blank_payload()], clients, BLANK_SECONDS, "service, blank")

        result, report = measured(processes, run, out, seconds)
        return result, report, sum(counted(workers, blank)[1].values())


def markdown(report: dict) -> str:
    lines = [f"Run {report['date']}: `{report['command']}`, {report['clients']} clients, {report['seconds']:.0f} s per row.", "",
             "| row | photos/s | process | CPU ms per photo | " + " | ".join(name for name, _ in STAGES) + f" | {OTHER} |",
             "|---|---:|---|---:|" + "---:|" * (len(STAGES) + 1)]
    for row in report["rows"]:
        for process, figures in row["processes"].items():
            total = sum(figures["stages"].values()) or 1
            shares = [f"{100.0 * figures['stages'].get(name, 0) / total:.0f}%" if figures["stages"] else "-" for name, _ in STAGES + [(OTHER, ())]]
            lines.append(f"| {row['name']} | {row['photos_per_s']:.1f} | {process} | {figures['cpu_ms_per_photo']:.0f} | " + " | ".join(shares) + " |")
    lines += ["", "Stage shares are of each process's sampled Python-thread time (py-spy, idle excluded); "
              "ONNX Runtime's own pool threads are counted in CPU ms, not in the shares."]
    lines += ["", way_in_and_out(report["rows"])]
    return "\n".join(lines) + "\n"


def way_in_and_out(rows: list[dict]) -> str:
    inprocess, service = (row for row in rows if row["blank_cpu_ms"] is not None)
    per_photo = sum(figures["cpu_ms_per_photo"] for name, figures in service["processes"].items() if name != LOAD_GENERATOR)
    inprocess, service = inprocess["blank_cpu_ms"], service["blank_cpu_ms"]
    added = service - inprocess
    return (f"The way in and out alone: a flat grey PNG, refused (422 `blank`) as soon as it is decoded, sent for {BLANK_SECONDS:.0f} s "
            f"by as many clients, costs {inprocess:.2f} CPU ms a call in-process and {service:.2f} ms a request in the service's "
            f"API workers. The HTTP path adds {added:.2f} ms to each request: {100.0 * added / per_photo:.1f}% of the service's "
            f"{per_photo:.1f} CPU ms per photo.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per row")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--model", type=Path, help="FACECHECK_MODEL for both rows (default: the served default)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a setting for the service row, e.g. FACECHECK_API_WORKERS=1 (repeatable)")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/profile-<timestamp>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model:
        os.environ["FACECHECK_MODEL"] = str(args.model.resolve())
    out = args.out or REPO / "loadtests" / "reports" / time.strftime("profile-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    payloads = single_face_payloads(400, 40)
    rows = []
    for name, measure in (("in-process", lambda: in_process(payloads, args.clients, args.seconds, out / "in-process")),
                          ("service", lambda: through_service(payloads, args.clients, args.seconds, out / "service",
                                                             server_env(**dict(kv.split("=", 1) for kv in args.env)))),
                          ("side by side", lambda: side_by_side(payloads, args.clients, args.seconds))):
        run, processes, blank_cpu_ms = measure()
        rows.append({"name": run.name, "photos_per_s": round(run.per_s, 2), "failures": run.failures, "processes": processes,
                     "blank_cpu_ms": None if blank_cpu_ms is None else round(blank_cpu_ms, 2)})
        print(f"  {run.name}: {run.per_s:.1f} photos/s, " + ", ".join(f"{p} {f['cpu_ms_per_photo']:.0f} CPU ms/photo" for p, f in processes.items()), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python -m loadtests.profile " + " ".join(argv if argv is not None else sys.argv[1:]),
              "clients": args.clients, "seconds": args.seconds, "rows": rows}
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    (out / "profile.md").write_text(markdown(report))
    print(markdown(report))
    print(f"reports in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
