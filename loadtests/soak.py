"""Memory under load: starts a server on loopback, loads it, and samples the RSS of its processes.

    # a fixed, bounded run: 200 requests at concurrency 8, every tests/corpus.py input (bombs included)
    # mixed with real photos of ../shared/data
    .venv/bin/python -m loadtests.soak --requests 200 --concurrency 8

    # a soak: the locust scenarios (loadtests/locustfile.py) for 10 minutes, RSS sampled every 5 s
    .venv/bin/python -m loadtests.soak --duration 10m --users 8

Writes memory.json (per process: RSS at the start, after warm-up, peak and end, the growth and its slope
per minute, the least-squares slope and the peak over the run's second half, and every sample; the answers by status) and, for a soak, locust's reports into loadtests/reports/<timestamp>/,
and prints the summary. Exits 1 when any answer was a 5xx.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import itertools
import json
import random
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from loadtests.run import run_locust, summarise
from loadtests.server import REPO, running_server, serve_process

MB = 1024 * 1024


class Sampler(threading.Thread):
    """Samples the RSS of a `bentoml serve` process and of its workers every `interval_s` seconds."""

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.serve = serve_process(url)
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.started = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def sample(self) -> dict[str, float]:
        rss = {}
        for process in [self.serve, *self.serve.children()]:
            try:
                rss[_role(process)] = process.memory_info().rss / MB
            except psutil.NoSuchProcess:
                continue
        self.samples.append((time.monotonic() - self.started, rss))
        return rss

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()

    def report(self, warm_s: float) -> dict[str, dict[str, float]]:
        """Per process: MB at the first sample, after `warm_s` seconds of load, at the peak and at the end."""
        out = {}
        for role in sorted({role for _, rss in self.samples for role in rss}):
            series = [(t, rss[role]) for t, rss in self.samples if role in rss]
            warm = next(((t, mb) for t, mb in series if t >= warm_s), series[0])
            end_t, end_mb = series[-1]
            minutes = max((end_t - warm[0]) / 60.0, 1e-9)
            late = [(t, mb) for t, mb in series if t >= end_t / 2]
            out[role] = {"start_mb": round(series[0][1], 1), "warm_mb": round(warm[1], 1), "peak_mb": round(max(mb for _, mb in series), 1),
                         "end_mb": round(end_mb, 1), "growth_after_warm_mb": round(end_mb - warm[1], 1),
                         "growth_mb_per_min": round((end_mb - warm[1]) / minutes, 2),
                         "second_half_slope_mb_per_min": round(_slope(late) * 60.0, 2), "second_half_peak_mb": round(max(mb for _, mb in late), 1),
                         "samples": len(series)}
        return out


def _slope(series: list[tuple[float, float]]) -> float:
    """Least-squares MB per second: a plateau that saw-tooths (the allocator trimming) reads near 0, where end minus
    start would read whichever tooth the run happened to end on."""
    if len(series) < 2:
        return 0.0
    mean_t = sum(t for t, _ in series) / len(series)
    mean_mb = sum(mb for _, mb in series) / len(series)
    spread = sum((t - mean_t) ** 2 for t, _ in series)
    return sum((t - mean_t) * (mb - mean_mb) for t, mb in series) / spread if spread else 0.0


def _role(process: psutil.Process) -> str:
    command = process.cmdline()
    if "--service-name" in command:
        worker_id = f" {command[command.index('--worker-id') + 1]}" if "--worker-id" in command else ""
        return f"{command[command.index('--service-name') + 1]} worker{worker_id}"
    return "bentoml serve (supervisor)"


def payloads(max_bytes: int) -> list[tuple[str, bytes, str, int]]:
    """(name, bytes, content type, expected status): the test corpus, and real photos when there are some."""
    sys.path.insert(0, str(REPO / "tests"))  # the corpus is the tests' own; nothing here duplicates it
    from corpus import corpus

    mixed = [(item.name, item.data, item.content_type, item.status) for item in corpus(max_bytes)]
    try:
        from loadtests.images import mixed_payloads

        mixed += [(p.name, p.data, p.content_type, 200) for p in mixed_payloads(40)]
    except SystemExit:
        pass  # no ../shared/data: the corpus alone
    return mixed


def fixed_load(url: str, count: int, concurrency: int, max_bytes: int) -> dict:
    """`count` POST /classify at `concurrency`, cycling through the payloads in a shuffled order."""
    available = payloads(max_bytes)
    random.Random(0).shuffle(available)
    chosen = list(itertools.islice(itertools.cycle(available), count))
    statuses: collections.Counter = collections.Counter()
    unexpected = []

    def send(payload: tuple[str, bytes, str, int]) -> None:
        name, data, content_type, expected = payload
        try:
            status = requests.post(f"{url}/classify", files={"image": (name, data, content_type)}, timeout=600).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        statuses[status] += 1
        if status != expected:
            unexpected.append((name, expected, status))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, chosen))
    return {"requests": count, "concurrency": concurrency, "seconds": round(time.monotonic() - started, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}, "unexpected": unexpected[:20]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--requests", type=int, help="send this many requests (the corpus and real photos), then stop")
    mode.add_argument("--duration", help="run the locust scenarios this long, e.g. 2m, 10m")
    p.add_argument("--concurrency", type=int, default=8, help="with --requests: requests in flight at once")
    p.add_argument("--users", type=int, default=8, help="with --duration: locust users")
    p.add_argument("--spawn-rate", type=float, default=4, help="with --duration: locust users started per second")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--warm-s", type=float, default=30.0, help="growth is measured from this many seconds into the run")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/<timestamp>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or REPO / "loadtests" / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    from service.config import Settings

    max_bytes = Settings().max_bytes
    with running_server(log_path=out / "server.log") as url:
        sampler = Sampler(url, args.sample_s)
        sampler.start()
        if args.requests:
            load = fixed_load(url, args.requests, args.concurrency, max_bytes)
        else:
            run_locust(url, argparse.Namespace(users=args.users, spawn_rate=args.spawn_rate, duration=args.duration), out)
            locust = summarise(out)
            load = {k: v for k, v in locust.items() if k != "per_endpoint"} | {"failure_kinds": _locust_failures(out)}
        sampler.stop()
    summary = {"load": load, "memory": sampler.report(args.warm_s), "sample_s": args.sample_s}
    series = [[round(t, 1), {role: round(mb, 1) for role, mb in rss.items()}] for t, rss in sampler.samples]
    (out / "memory.json").write_text(json.dumps(summary | {"series": series}, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"reports in {out}")
    if args.requests:
        return 1 if any(not status.startswith(("2", "4")) for status in load["statuses"]) else 0
    return 1 if load["failures"] else 0


def _locust_failures(out: Path) -> dict[str, int]:
    """locust's failures by kind (its CSV), e.g. "503: ..." when the scenarios met overload."""
    import csv

    failures = out / "locust_failures.csv"
    counts: collections.Counter = collections.Counter()
    if failures.exists():
        with open(failures) as handle:
            for row in csv.DictReader(handle):
                counts[row["Error"][:60]] += int(row["Occurrences"])
    return dict(counts)


if __name__ == "__main__":
    raise SystemExit(main())
