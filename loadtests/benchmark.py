"""Side-by-side performance of facecheck, in one run on the same images: a table of ratios.

    .venv/bin/python -m loadtests.benchmark                      # about 13 minutes on 2 CPU cores (7 with --pairs 0)
    .venv/bin/python -m loadtests.benchmark --device cuda        # the same on a CUDA machine

Workload: 400x400 single-face JPEGs made from ../shared/data (loadtests.images), each model at the TTA
the service uses with it (FACECHECK_TTA_ANGLES, else its card's) unless a row says otherwise. Each
throughput row runs its clients for --seconds after a warm-up; concurrent clients each send one image
at a time, back to back. Rows:
- naive: one image at a time, facenet-pytorch MTCNN with defaults, PyTorch eager classifier;
- in-process: the service's own Engine (decode, detection, crops, ONNX Runtime) without HTTP;
- service: a real `bentoml serve` on loopback, POST /classify, adaptive batching on (FACECHECK_BATCH_SIZE=64,
  the default on a GPU) and off (1, the default on CPU), and with its defaults but one API worker instead
  of two (FACECHECK_API_WORKERS=1);
- orientation: the in-process pipeline with turning photos upright off (FACECHECK_TURN_SIDEWAYS=false), and on
  with the same photos turned on their side;
- TTA: the in-process pipeline with no, 3 and 5 rotations;
- int8: where the served model has an int8 sibling (exports/<name>-int8.onnx, python -m training.quantize),
  the in-process pipeline and the service with it;
- --compare-model PATH (repeatable): the in-process pipeline and the service (its defaults) with another
  model, e.g. the previous default, so a new model's cost is a ratio measured in the same run;
- classifier: ONNX Runtime (float, and int8 where present) vs PyTorch eager, crops per second at batch 3
  (one face's TTA) and 48;
- detection: the service's detector vs facenet-pytorch's MTCNN with defaults, one image at a time and two at once;
- paired (--pairs N, 3 by default, none with --quick): service / in-process, the float and int8 models, at the
  headline client counts, as N back-to-back pairs of an in-process row and a service row with the server
  already up. A shared machine's speed drifts over minutes, so one pair's ratio moves with it; the median
  of N adjacent pairs is the figure to read.
Writes benchmark.json and benchmark.md (the tables) into loadtests/reports/benchmark-<timestamp>/.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import requests
from urllib3 import encode_multipart_formdata

from loadtests.images import Payload, sideways, single_face_payloads
from loadtests.server import REPO, running_server

TTA5 = (-30.0, -15.0, 0.0, 15.0, 30.0)


@dataclass
class Run:
    name: str
    clients: int
    images: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {"name": self.name, "clients": self.clients, "images": self.images, "failures": self.failures,
                "images_per_s": round(self.per_s, 2), "p50_ms": round(self.percentile(50), 1), "p99_ms": round(self.percentile(99), 1)}


def timed_loop(run: Run, seconds: float, one: Callable[[int], bool]) -> None:
    """Calls one(i) back to back for `seconds`, recording latency and failures into `run`."""
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        ok = one(i)
        run.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        run.images += 1
        run.failures += 0 if ok else 1
        i += 1


def threaded(name: str, clients: int, seconds: float, warmup: int, one: Callable[[int, int], bool]) -> Run:
    """`clients` threads, each calling one(client, i); the first `warmup` calls per client are not counted."""
    run = Run(name, clients)
    barrier = threading.Barrier(clients + 1)
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(warmup):
            one(c, i)
        barrier.wait()
        own = Run(name, 1)
        timed_loop(own, seconds, lambda i: one(c, i + warmup))
        with lock:
            run.images += own.images
            run.failures += own.failures
            run.latencies_ms += own.latencies_ms

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - started
    return run


def multipart_bodies(payloads: Sequence[Payload]) -> list[tuple[bytes, str]]:
    """Each payload as the body and content type of a one-file upload, encoded once so that the clients,
    which share the server's cores, spend as little of them as they can."""
    return [encode_multipart_formdata({"image": (p.name, p.data, p.content_type)}) for p in payloads]


def http_run(url: str, payloads: Sequence[Payload], clients: int, seconds: float, name: str) -> Run:
    sessions = [requests.Session() for _ in range(clients)]
    bodies = multipart_bodies(payloads)

    def one(c: int, i: int) -> bool:
        body, content_type = bodies[(c * 7 + i) % len(bodies)]
        response = sessions[c].post(f"{url}/classify", data=body, headers={"Content-Type": content_type}, timeout=60)
        return response.status_code == 200

    return threaded(name, clients, seconds, warmup=2, one=one)


def engine_run(tta: Sequence[float] | None, device: str, payloads: Sequence[Payload], clients: int, seconds: float, name: str,
               model: Path | None = None, on_start: Callable[[], None] = lambda: None, classifier_threads: int = 0,
               turn_sideways: bool | None = None) -> Run:
    """The service's Engine in this process (the served model unless `model`): `clients` asyncio tasks, one image at a time each;
    `tta` None: the rotations the service uses with the model (FACECHECK_TTA_ANGLES, else its card's). `on_start` is
    called when the model is loaded and warmed up, as the measured window starts; `classifier_threads` 0: one per core;
    `turn_sideways` None: FACECHECK_TURN_SIDEWAYS."""
    from service.cli import load_engine
    from service.config import get_settings

    engine = load_engine(model or get_settings().model, tta, device, classifier_threads, turn_sideways)

    async def drive() -> Run:
        run = Run(name, clients)

        async def client(c: int, deadline: float | None, count: int | None) -> None:
            i = 0
            while (deadline is None or time.perf_counter() < deadline) and (count is None or i < count):
                payload = payloads[(c * 7 + i) % len(payloads)]
                started = time.perf_counter()
                try:
                    await engine.classify_bytes(payload.data, payload.name)
                    ok = True
                except Exception:  # noqa: BLE001 - a failure is counted, not raised
                    ok = False
                if deadline is not None:
                    run.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                    run.images += 1
                    run.failures += 0 if ok else 1
                i += 1

        await asyncio.gather(*(client(c, None, 2) for c in range(clients)))
        on_start()
        started = time.perf_counter()
        await asyncio.gather(*(client(c, started + seconds, None) for c in range(clients)))
        run.seconds = time.perf_counter() - started
        return run

    return asyncio.run(drive())


@dataclass
class Pair:
    model: str
    clients: int
    inprocess: Run
    service: Run

    @property
    def ratio(self) -> float:
        return self.service.per_s / self.inprocess.per_s if self.inprocess.per_s else float("nan")

    def summary(self) -> dict:
        return {"model": self.model, "clients": self.clients, "inprocess_per_s": round(self.inprocess.per_s, 2),
                "service_per_s": round(self.service.per_s, 2), "ratio": round(self.ratio, 3), "inprocess_p99_ms": round(self.inprocess.percentile(99), 1),
                "service_p99_ms": round(self.service.percentile(99), 1), "service_failures": self.service.failures}


def paired_runs(model: Path, label: str, device: str, payloads: Sequence[Payload], client_counts: Sequence[int], seconds: float,
                pairs: int, log_path: Path) -> list[Pair]:
    """`pairs` rounds, each an in-process row then a service row per client count, with one server up throughout."""
    out = []
    with running_server(server_env(FACECHECK_MODEL=str(model.resolve())), log_path=log_path) as url:
        for round_ in range(1, pairs + 1):
            for clients in client_counts:
                inprocess = engine_run(None, device, payloads, clients, seconds, f"in-process, {label}, pair {round_}", model)
                service = http_run(url, payloads, clients, seconds, f"service, {label}, pair {round_}")
                out.append(Pair(label, clients, inprocess, service))
                print(f"  pair {round_} {label:6} {clients:2} clients: in-process {inprocess.per_s:6.2f}, service {service.per_s:6.2f} img/s "
                      f"({out[-1].ratio:.2f}x), service p99 {service.percentile(99):.0f} ms", flush=True)
    return out


def turning_pairs(device: str, payloads: Sequence[Payload], clients: int, seconds: float, rounds: int) -> list[tuple[float, float]]:
    """`rounds` back-to-back pairs of the in-process pipeline on upright photos, turning photos on their side off then on: img/s each."""
    return [(engine_run(None, device, payloads, clients, seconds, f"in-process, turning off, pair {r}", turn_sideways=False).per_s,
             engine_run(None, device, payloads, clients, seconds, f"in-process, turning on, pair {r}", turn_sideways=True).per_s)
            for r in range(1, rounds + 1)]


def turning_ratio(pairs: Sequence[tuple[float, float]], clients: int) -> list[tuple[str, float]]:
    ratios = [on / off for off, on in pairs]
    if not ratios:
        return []
    return [(f"orientation: turning on / off, upright photos (in-process, {clients} clients), median of {len(ratios)} adjacent pairs "
             f"(range {min(ratios):.2f}-{max(ratios):.2f})", round(float(np.median(ratios)), 2))]


def paired_ratios(pairs: Sequence[Pair]) -> list[tuple[str, float]]:
    """The median service / in-process ratio of each model and client count."""
    groups: dict[tuple[str, int], list[float]] = {}
    for pair in pairs:
        groups.setdefault((pair.model, pair.clients), []).append(pair.ratio)
    return [(f"service / in-process, {model} model ({clients} clients), median of {len(values)} adjacent pairs (range {min(values):.2f}-{max(values):.2f})",
             float(np.median(values))) for (model, clients), values in groups.items()]


def eager_classifier():
    """The served model's computation in PyTorch eager mode: its architecture (an ensemble's members, each
    on the crop resized to its own size, the larger probability answering) with the checkpoint its card
    names where present (the model's own weights), else randomly initialised; the same computation either way."""
    import torch

    from service.config import get_settings
    from service.onnx_model import read_card
    from service.preprocess import to_input

    card = read_card(get_settings().model)
    members = [eager_member(m["architecture"], m["training"], m["input_size"]) for m in card.training.get("members", [])]
    members = members or [eager_member(card.architecture, card.training, card.preprocess.input_size)]
    spec = card.preprocess

    def classify(crops: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(to_input(crops, spec))
        with torch.inference_mode():
            return torch.stack([member(batch) for member in members]).amax(dim=0).numpy()

    return classify


def eager_member(architecture: str, training: dict, size: int):
    import torch
    import torch.nn.functional as F

    from training.models import create_model

    checkpoint = training.get("checkpoint")
    weights = str(REPO / checkpoint) if checkpoint and (REPO / checkpoint).is_file() else "none"  # its speed, not its answers, is measured
    model, _ = create_model(architecture, weights)
    model.eval()

    def probs(batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[-1] != size:
            batch = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return torch.sigmoid(model(batch)).reshape(-1)

    return probs


def naive_run(payloads: Sequence[Payload], seconds: float) -> Run:
    """One image at a time: decode, facenet-pytorch MTCNN with defaults, crops, PyTorch eager."""
    from service.config import get_settings
    from service.faces import DetectorSettings, FaceDetector
    from service.imaging import decode_image
    from service.onnx_model import read_card
    from service.pipeline import Pipeline

    settings = get_settings()
    card = read_card(settings.model)
    pipeline = Pipeline(card, FaceDetector(DetectorSettings(backend="facenet")), settings.angles_for(card))
    classify = eager_classifier()

    def one(i: int) -> bool:
        payload = payloads[i % len(payloads)]
        image = decode_image(payload.data, settings.max_bytes, settings.max_pixels)
        pipeline.run(image, classify, payload.name)
        return True

    run = Run("naive: facenet MTCNN + PyTorch eager, sequential", 1)
    for i in range(2):
        one(i)
    started = time.perf_counter()
    timed_loop(run, seconds, one)
    run.seconds = time.perf_counter() - started
    return run


def int8_sibling() -> Path | None:
    """exports/<name>-int8.onnx beside the served model, where python -m training.quantize wrote one."""
    from service.config import get_settings

    model = get_settings().model
    sibling = model.with_name(f"{model.stem}-int8.onnx")
    return sibling if sibling.is_file() and sibling != model else None


def classifier_rates(device: str, seconds: float) -> dict[str, float]:
    """Crops per second, ONNX Runtime (float, and int8 where present) vs PyTorch eager, at batch 3 and 48."""
    from service.config import get_settings
    from service.onnx_model import OnnxClassifier

    served = OnnxClassifier(get_settings().model, device)
    side = served.card.preprocess.input_size
    classifiers = {"onnxruntime": served.predict_crops, "pytorch_eager": eager_classifier()}
    int8 = int8_sibling()
    if int8:
        classifiers["onnxruntime_int8"] = OnnxClassifier(int8, device).predict_crops
    rates = {}
    for batch in (3, 48):
        crops = np.random.default_rng(0).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
        for name, classify in classifiers.items():
            classify(crops)
            run = Run(name, 1)
            started = time.perf_counter()
            timed_loop(run, seconds / 4, lambda i: classify(crops) is not None)
            rates[f"{name}_batch{batch}"] = run.images * batch / (time.perf_counter() - started)
    return rates


def detection_rates(payloads: Sequence[Payload], seconds: float) -> dict[str, dict[str, float]]:
    """Milliseconds per image of each detector on the decoded workload: one image at a time, and two at
    once (two threads, as the service's API worker runs them), where the wall time is shared by both."""
    import dataclasses

    from service.faces import DetectorSettings, FaceDetector, configured_detector
    from service.imaging import decode_image

    images = [decode_image(p.data, 10**8, 10**8) for p in payloads]
    configured = configured_detector()
    detectors = {
        "facenet_defaults": FaceDetector(DetectorSettings(backend="facenet")),
        "service_detector": FaceDetector(dataclasses.replace(configured, min_face_fraction=0.0)),
    }
    if configured.min_face_fraction:
        detectors[f"service_detector_min_face_fraction_{configured.min_face_fraction:g}"] = FaceDetector(configured)
    rates: dict[str, dict[str, float]] = {}
    share = seconds / len(detectors) / 2
    for name, detector in detectors.items():
        for image in images:
            detector.detect(image)  # warm-up: every pyramid size and candidate count
        rates[name] = {}
        for threads in (1, 2):
            run = threaded(name, threads, share, warmup=1, one=lambda c, i: detector.detect(images[(c * 7 + i) % len(images)]) is not None)
            rates[name][str(threads)] = run.seconds / run.images * 1000.0
    return rates


def served_tta() -> str:
    """The served model's test-time views, as the workload line states them."""
    from service.config import get_settings
    from service.onnx_model import read_card

    settings = get_settings()
    card = read_card(settings.model)
    angles = ",".join(f"{a:g}" for a in settings.angles_for(card)) or "0"
    return f"TTA {angles}" + (" and each mirrored" if card.tta_mirror else "")


def server_env(**extra: str) -> dict[str, str]:
    # Throughput, not the cap on requests in flight, is measured here: 16 clients may all reach one API worker.
    return {**os.environ, "FACECHECK_MAX_CONCURRENCY": "64", **extra}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0, help="measured time per throughput row")
    p.add_argument("--images", type=int, default=40, help="distinct photos in the workload")
    p.add_argument("--size", type=int, default=400, help="side of the workload's photos in pixels")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients of the headline rows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="FACECHECK_DEVICE for the service and the in-process rows")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/benchmark-<timestamp>)")
    p.add_argument("--quick", action="store_true",
                   help="only the in-process and service rows (batching on and off, int8) and the classifier's rates: about 3 minutes, for a lent GPU")
    p.add_argument("--pairs", type=int, metavar="N", help="adjacent in-process/service pairs per model and client count (default 3; 0 with --quick)")
    p.add_argument("--compare-model", type=Path, action="append", default=[], metavar="PATH",
                   help="also run the in-process pipeline and the service with this exported model (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from service.config import Settings

    args = parse_args(argv)
    if args.pairs is not None and args.pairs < 0:
        raise SystemExit(f"--pairs is a count, 0 or more, got {args.pairs}")
    os.environ["FACECHECK_DEVICE"] = args.device
    out = args.out or REPO / "loadtests" / "reports" / time.strftime("benchmark-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    payloads = single_face_payloads(args.size, args.images)
    s, n = args.seconds, args.clients
    runs: dict[str, Run] = {}

    def note(key: str, run: Run) -> None:
        runs[key] = run
        print(f"  {key:28} {run.per_s:7.2f} img/s  p50 {run.percentile(50):7.1f} ms  p99 {run.percentile(99):7.1f} ms  failures {run.failures}", flush=True)

    print("classifier and detection ...", flush=True)
    classifier = classifier_rates(args.device, s)
    detection = {} if args.quick else detection_rates(payloads, s)
    print(json.dumps({**classifier, **detection}, indent=1), flush=True)
    print("pipelines ...", flush=True)
    if not args.quick:
        note("naive", naive_run(payloads, s))
    headline = sorted({n, 16})  # the service's gap to the in-process pipeline is measured at both
    # next to the first in-process row, whose photos and settings they share but for turning
    note(f"inprocess_sideways_{n}", engine_run(None, args.device, sideways(payloads), n, s, "in-process, photos on their side", turn_sideways=True))
    note(f"inprocess_turning_off_{n}", engine_run(None, args.device, payloads, n, s, "in-process, turning off", turn_sideways=False))
    for clients in headline:
        note(f"inprocess_{clients}", engine_run(None, args.device, payloads, clients, s, f"in-process, {clients} clients"))
    if not args.quick:
        note("inprocess_tta0", engine_run((), args.device, payloads, n, s, "in-process, no TTA"))
        note("inprocess_tta5", engine_run(TTA5, args.device, payloads, n, s, "in-process, TTA 5"))
    int8 = int8_sibling()
    for clients in headline if int8 else ():
        note(f"inprocess_int8_{clients}", engine_run(None, args.device, payloads, clients, s, f"in-process, int8 model, {clients} clients", int8))
    for batching, size in (("on", "64"), ("off", "1")):
        with running_server(server_env(FACECHECK_BATCH_SIZE=size), log_path=out / f"server-batching-{batching}.log") as url:
            for clients in sorted({1, 16, n} if args.quick else {1, 4, 16, n}):
                note(f"service_batching_{batching}_{clients}", http_run(url, payloads, clients, s, f"service, batching {batching}, {clients} clients"))
    if not args.quick:
        with running_server(server_env(FACECHECK_API_WORKERS="1"), log_path=out / "server-api-workers-1.log") as url:
            note(f"service_api_workers1_{n}", http_run(url, payloads, n, s, f"service, 1 API worker, {n} clients"))
    if int8:
        with running_server(server_env(FACECHECK_MODEL=str(int8)), log_path=out / "server-int8.log") as url:
            for clients in headline:
                note(f"service_int8_{clients}", http_run(url, payloads, clients, s, f"service, int8 model, {clients} clients"))
    for other in args.compare_model:
        note(f"inprocess_model_{other.stem}_{n}", engine_run(None, args.device, payloads, n, s, f"in-process, {other}, {n} clients", other))
        with running_server(server_env(FACECHECK_MODEL=str(other.resolve())), log_path=out / f"server-{other.stem}.log") as url:
            note(f"service_model_{other.stem}_{n}", http_run(url, payloads, n, s, f"service, {other}, {n} clients"))
    pairs: list[Pair] = []
    rounds = args.pairs if args.pairs is not None else 0 if args.quick else 3
    models = [("float", Settings().model)] + ([("int8", int8)] if int8 else [])
    for label, model in models if rounds else []:
        pairs += paired_runs(model, label, args.device, payloads, headline, s, rounds, out / f"server-pairs-{label}.log")
    turning = turning_pairs(args.device, payloads, n, s, rounds)

    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "command": "python -m loadtests.benchmark " + " ".join(argv or sys.argv[1:]),
              "workload": f"{args.images} single-face JPEGs, {args.size}x{args.size}, {served_tta()}", "classifier_crops_per_s": classifier,
              "detection_ms_per_image": detection, "runs": {k: r.summary() for k, r in runs.items()}}
    report["default_batching"] = default_batching()
    report["ratios"] = ratios(runs, classifier, detection, n, report["default_batching"]) + turning_ratio(turning, n) + \
        [(label, round(value, 2)) for label, value in paired_ratios(pairs)]
    report["pairs"] = [pair.summary() for pair in pairs]
    (out / "benchmark.json").write_text(json.dumps(report, indent=1))
    (out / "benchmark.md").write_text(markdown(report))
    print(markdown(report))
    print(f"reports in {out}")
    return 0


def default_batching() -> str:
    """"on" or "off": adaptive batching as the service sets it by default on this machine (FACECHECK_DEVICE as set)."""
    from service.config import Settings

    return "on" if Settings().adaptive_batch_size > 1 else "off"


def ratios(runs: dict[str, Run], classifier: dict[str, float], detection: dict[str, dict[str, float]], n: int, batching: str) -> list[tuple[str, float]]:
    """Each comparison whose rows ran (--quick leaves some out)."""
    rate = {k: r.per_s for k, r in runs.items()}
    service = f"service_batching_{batching}_{n}"  # the service with its defaults
    pairs = [(f"service, defaults (batching {batching}) ({c} clients) / in-process pipeline ({c} clients)", f"service_batching_{batching}_{c}", f"inprocess_{c}")
             for c in sorted({n, 16})]
    pairs += [(f"service, int8 model ({c} clients) / in-process pipeline, int8 model ({c} clients)", f"service_int8_{c}", f"inprocess_int8_{c}")
              for c in sorted({n, 16})]
    pairs += [
        (f"service, defaults ({n} clients) / naive pipeline", service, "naive"),
        (f"service, 2 API workers (the default) / 1 API worker ({n} clients)", service, f"service_api_workers1_{n}"),
        (f"in-process pipeline ({n} clients) / naive pipeline", f"inprocess_{n}", "naive"),
        (f"service, int8 model ({n} clients) / naive pipeline", f"service_int8_{n}", "naive"),
        (f"in-process pipeline: int8 / float model ({n} clients)", f"inprocess_int8_{n}", f"inprocess_{n}"),
    ]
    for key in (k for k in rate if k.startswith("service_model_")):
        other = key.removeprefix("service_model_").removesuffix(f"_{n}")
        pairs += [(f"service, served model / {other} ({n} clients)", service, key),
                  (f"in-process pipeline, served model / {other} ({n} clients)", f"inprocess_{n}", f"inprocess_model_{other}_{n}")]
    pairs += [(f"service: batching on / off, {c} client{'s' if c > 1 else ''}", f"service_batching_on_{c}", f"service_batching_off_{c}")
              for c in sorted({1, 4, 16, n})]
    pairs += [(f"orientation: turning on (the default) / off, upright photos (in-process, {n} clients)", f"inprocess_{n}", f"inprocess_turning_off_{n}"),
              (f"orientation: photos on their side / upright, turning on (in-process, {n} clients)", f"inprocess_sideways_{n}", f"inprocess_{n}")]
    pairs += [("TTA: no rotation / the model's (in-process)", "inprocess_tta0", f"inprocess_{n}"),
              ("TTA: 5 rotations / the model's (in-process)", "inprocess_tta5", f"inprocess_{n}")]
    rows = [(label, rate[a] / rate[b]) for label, a, b in pairs if a in rate and b in rate]
    rows += [(f"classifier: ONNX Runtime / PyTorch eager, batch {b}", classifier[f"onnxruntime_batch{b}"] / classifier[f"pytorch_eager_batch{b}"]) for b in (3, 48)]
    rows += [(f"classifier: ONNX Runtime int8 / float, batch {b}", classifier[f"onnxruntime_int8_batch{b}"] / classifier[f"onnxruntime_batch{b}"])
             for b in (3, 48) if f"onnxruntime_int8_batch{b}" in classifier]
    if "facenet_defaults" in detection:
        reference = detection["facenet_defaults"]
        rows += [(f"detection: facenet-pytorch defaults / {name.replace('_', ' ')}, {at_once} image{'s' if at_once != '1' else ''} at once",
                  reference[at_once] / ms) for name, timings in detection.items() if name != "facenet_defaults" for at_once, ms in timings.items()]
    return [(label, round(value, 2)) for label, value in rows]


def machine() -> str:
    import onnxruntime

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"


def markdown(report: dict) -> str:
    lines = [f"Run {report['date']} on {report['machine']}: `{report['command'].strip()}`", f"Workload: {report['workload']}.", "",
             "| comparison | ratio |", "|---|---:|"]
    lines += [f"| {label} | {value:.2f}x |" for label, value in report["ratios"]]
    lines += ["", "| row | clients | images/s | p50 ms | p99 ms | failures |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['clients']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failures']} |" for r in report["runs"].values()]
    lines += ["", "| classifier | crops/s |", "|---|---:|"] + [f"| {k} | {v:.0f} |" for k, v in report["classifier_crops_per_s"].items()]
    lines += ["", "| detector | ms/image, 1 at once | ms/image, 2 at once |", "|---|---:|---:|"]
    lines += [f"| {name} | {t['1']:.1f} | {t['2']:.1f} |" for name, t in report["detection_ms_per_image"].items()]
    if report.get("pairs"):
        lines += ["", "| adjacent pair | model | clients | in-process images/s | service images/s | service / in-process | in-process p99 ms | service p99 ms | service failures |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        counts: dict[tuple[str, int], int] = {}
        for pair in report["pairs"]:
            key = (pair["model"], pair["clients"])
            counts[key] = counts.get(key, 0) + 1
            lines.append(f"| {counts[key]} | {pair['model']} | {pair['clients']} | {pair['inprocess_per_s']:.1f} | {pair['service_per_s']:.1f} | "
                         f"{pair['ratio']:.2f}x | {pair['inprocess_p99_ms']:.0f} | {pair['service_p99_ms']:.0f} | {pair['service_failures']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
