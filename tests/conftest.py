"""Shared fixtures. `server`: one real `bentoml serve` of the service for the whole test session, with its
default settings; `batched_server`: another with adaptive batching on, for the tests of batching."""
from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from PIL import Image

from loadtests.server import running_server
from service_fixtures import encode

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_START_S = 240


@dataclass(frozen=True)
class Server:
    url: str
    data_root: Path
    sorted_root: Path
    max_bytes: int
    max_batch_files: int
    max_faces: int
    log: Path


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """`bentoml serve` from the repository root (bentofile.yaml) on a free loopback port.

    FACECHECK_DATA_ROOT is an empty temporary folder that tests fill, the sorted copies go to its sorted/,
    and the byte, batch and faces limits are low so that the limit tests stay cheap. The other FACECHECK_*
    settings are this process's (the defaults, or another model named by FACECHECK_MODEL).
    """
    yield from serve(tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="session")
def batched_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The same with adaptive batching on (FACECHECK_BATCH_SIZE=64), as it is by default on a GPU.

    Warmed up: BentoML's dispatcher times its first 25 or so calls one at a time to learn how long a batch
    takes, and sheds a burst that arrives meanwhile. Then one burst of 16 at once, answers unchecked, so
    that its estimates have seen batches too."""
    tiny = encode(Image.new("RGB", (8, 8)), "PNG")

    def send(_: int = 0) -> requests.Response:
        return requests.post(f"{server.url}/classify", data=tiny, headers={"Content-Type": "image/png"}, timeout=60)

    for server in serve(tmp_path_factory.mktemp("service-batched"), FACECHECK_BATCH_SIZE="64"):
        for _ in range(30):
            send().raise_for_status()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(16)))
        yield server


def serve(base: Path, **settings: str) -> Iterator[Server]:
    data_root = base / "data"
    data_root.mkdir()
    log = base / "serve.log"
    env = {key: value for key, value in os.environ.items() if key not in ("FACECHECK_DATA_ROOT", "FACECHECK_OUTPUT_ROOT")}
    env |= {
        "FACECHECK_DATA_ROOT": str(data_root),
        "FACECHECK_MAX_BYTES": "2000000",
        "FACECHECK_MAX_BATCH_FILES": "6",
        "FACECHECK_MAX_FACES": "8",
        "BENTOML_HOME": str(base / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        **settings,
    }
    try:
        with running_server(env, timeout_s=SERVER_START_S, log_path=log) as url:
            yield Server(url, data_root, data_root / "sorted", 2_000_000, 6, 8, log)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")
