"""Headless locust run against a server this script starts on loopback and stops when done.

    .venv/bin/python -m loadtests.run --users 8 --spawn-rate 4 --duration 2m

Writes locust's CSV and HTML reports and summary.json (requests/s, p50/p95/p99 latency, failures)
into loadtests/reports/<timestamp>/, and prints the summary.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtests.server import REPO, running_server

SCENARIOS = {"moderator": "Moderator", "photo400": "Photo400", "crowd": "Crowd"}  # locust user classes of loadtests/locustfile.py


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=8, help="concurrent simulated users")
    p.add_argument("--spawn-rate", type=float, default=4, help="users started per second")
    p.add_argument("--duration", default="2m", help="run time, e.g. 90s, 2m, 10m")
    p.add_argument("--out", type=Path, help="report folder (default loadtests/reports/<timestamp>)")
    p.add_argument("--host", help="test this running server instead of starting one")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="moderator", help="moderator: realistic mixed traffic; "
                   "photo400: 400x400 one-face photos back to back (docs/benchmarks.md); crowd: photos back to back, honouring "
                   "429's Retry-After (docs/reliability.md)")
    p.add_argument("--api-key", help="the key every user sends; a server this script starts gets it as FACECHECK_API_KEYS")
    return p.parse_args(argv)


def run_locust(host: str, args: argparse.Namespace, out: Path) -> None:
    command = [str(Path(sys.executable).parent / "locust"), "-f", str(REPO / "loadtests" / "locustfile.py"), "--headless",
               "--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", args.duration,
               "--stop-timeout", "30", "--csv", str(out / "locust"), "--html", str(out / "locust.html"), "--only-summary",
               SCENARIOS[getattr(args, "scenario", "moderator")]]
    env = dict(os.environ) | ({"FACECHECK_LOAD_API_KEY": args.api_key} if getattr(args, "api_key", None) else {})
    subprocess.run(command, cwd=REPO, env=env, check=False)


def summarise(out: Path) -> dict:
    with open(out / "locust_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    total = rows["Aggregated"]
    summary = {
        "requests": int(total["Request Count"]), "failures": int(total["Failure Count"]),
        "requests_per_s": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]), "p95_ms": float(total["95%"]), "p99_ms": float(total["99%"]),
        "per_endpoint": {name: {"requests": int(r["Request Count"]), "failures": int(r["Failure Count"]), "p50_ms": float(r["50%"]), "p99_ms": float(r["99%"])}
                         for name, r in rows.items() if name != "Aggregated"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or REPO / "loadtests" / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.host:
        run_locust(args.host, args, out)
    else:
        env = dict(os.environ) | ({"FACECHECK_API_KEYS": args.api_key} if args.api_key else {})
        with running_server(env, log_path=out / "server.log") as url:
            run_locust(url, args, out)
    summary = summarise(out)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_endpoint"}, indent=1))
    print(f"reports in {out}")
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
