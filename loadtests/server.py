"""Start a real facecheck server on a free loopback port, and stop it again."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import requests

if TYPE_CHECKING:
    import psutil

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(env: dict[str, str] | None = None, timeout_s: float = 180, log_path: Path | None = None) -> Iterator[str]:
    """Yields the base URL of a `bentoml serve` started in the repo root, ready (/readyz 200).

    env: the server's whole environment (default: this process's)."""
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    command = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ) if env is None else env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        if log_path:
            log.close()


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the server at {url} was not ready within {timeout_s} s")


def serve_process(url: str) -> "psutil.Process":
    """The `bentoml serve` process (a child of this one) listening at `url`."""
    import psutil

    port = url.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        if "serve" in child.cmdline() and port in child.cmdline():
            return child
    raise LookupError(f"no bentoml serve child of this process serves {url}")
