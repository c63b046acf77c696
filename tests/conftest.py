"""Shared fixtures. `server`: one real `bentoml serve` of the service for the whole test session, with its
default settings; `batched_server`: another with adaptive batching on, for the tests of batching."""
from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import requests

from loadtests.server import running_server
from service_fixtures import ENV_KEY, FILE_KEY, SERVER_START_S, encode, tiny_png

REPO_ROOT = Path(__file__).resolve().parents[1]
# Settings every test server gets from its fixture, never from this process's environment.
SET_HERE = {f"FACECHECK_{name}" for name in ("DATA_ROOT", "OUTPUT_ROOT", "API_KEYS", "API_KEYS_FILE", "METRICS_NEED_KEY",
                                             "MAX_CONCURRENCY", "RATE_PER_MINUTE", "BATCH_LATENCY_MS")}


@dataclass(frozen=True)
class Server:
    url: str
    data_root: Path
    sorted_root: Path
    max_bytes: int
    max_batch_files: int
    max_faces: int
    log: Path
    headers: dict[str, str] = field(default_factory=dict)  # what every request to it must carry: its API key, where it has keys


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
    tiny = tiny_png()

    def send(_: int = 0) -> requests.Response:
        return requests.post(f"{server.url}/classify", data=tiny, headers={"Content-Type": "image/png"}, timeout=120)

    for server in serve(tmp_path_factory.mktemp("service-batched"), FACECHECK_BATCH_SIZE="64"):
        for _ in range(30):
            send().raise_for_status()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(16)))
        yield server


@dataclass(frozen=True)
class Known:
    """Photos whose fake probability under the served model was worked out in this process, and a band around one."""

    inside: bytes  # a drawn face whose probability lies inside `band`
    outside: bytes  # a face-less ramp whose probability does not
    probabilities: tuple[float, float]
    band: tuple[float, float]


@pytest.fixture(scope="session")
def known() -> Known:
    """The drawn face of seed 7 and a ramp, classified by the service's own Engine in this process (service.cli's,
    with this process's settings, as the servers have them), and the band of +-0.02 around the face's probability."""
    import asyncio

    from service.cli import load_engine
    from service.config import get_settings
    from service_fixtures import gradient, synthetic_face

    settings = get_settings()
    engine = load_engine(settings.model, settings.tta_angles, settings.device)
    inside, outside = encode(synthetic_face(seed=7)), encode(gradient(), "PNG")
    p_in, p_out = (asyncio.run(engine.classify_bytes(data, "photo")).fake_probability for data in (inside, outside))
    band = (round(max(0.0, p_in - 0.02), 4), round(min(1.0, p_in + 0.02), 4))
    assert not band[0] <= p_out < band[1], f"the ramp ({p_out}) and the face ({p_in}) are too close for a band around one alone"
    return Known(inside, outside, (p_in, p_out), band)


@pytest.fixture(scope="session")
def banded_server(tmp_path_factory: pytest.TempPathFactory, known: Known) -> Server:
    """A server whose uncertain band, set with FACECHECK_UNCERTAIN_BAND, holds `known.inside`'s probability.
    Its other settings are off the defaults too, so that one server start covers them: one API worker, no access log."""
    yield from serve(tmp_path_factory.mktemp("service-banded"), FACECHECK_UNCERTAIN_BAND=",".join(map(str, known.band)), FACECHECK_API_WORKERS="1",
                     FACECHECK_ACCESS_LOG="false")


@pytest.fixture(scope="session")
def jpeg_png_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A server that opens JPEG and PNG only (FACECHECK_FORMATS), as an operator might expose it."""
    yield from serve(tmp_path_factory.mktemp("service-jpeg-png"), FACECHECK_FORMATS="jpg,PNG", FACECHECK_API_WORKERS="1",
                     FACECHECK_ACCESS_LOG="false")


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A server with API keys: ENV_KEY in FACECHECK_API_KEYS, and FILE_KEY in FACECHECK_API_KEYS_FILE as its SHA-256 only;
    /metrics needs a key too. Its `headers` carry ENV_KEY."""
    import hashlib

    base = tmp_path_factory.mktemp("service-keyed")
    keys_file = base / "keys.txt"
    keys_file.write_text(f"# who may call this test server\nsha256:{hashlib.sha256(FILE_KEY.encode()).hexdigest()}\n\n")
    servers = serve(base, FACECHECK_API_KEYS=ENV_KEY, FACECHECK_API_KEYS_FILE=str(keys_file), FACECHECK_METRICS_NEED_KEY="true")
    for server in servers:
        yield Server(**{**server.__dict__, "headers": {"Authorization": f"Bearer {ENV_KEY}"}})


def serve(base: Path, **settings: str) -> Iterator[Server]:
    data_root = base / "data"
    data_root.mkdir()
    log = base / "serve.log"
    env = {key: value for key, value in os.environ.items() if key not in SET_HERE}
    env |= {
        "FACECHECK_DATA_ROOT": str(data_root),
        "FACECHECK_MAX_BYTES": "2000000",
        "FACECHECK_MAX_BATCH_FILES": "6",
        "FACECHECK_MAX_FACES": "8",
        # Budgets no busy machine runs out of: the classifier sheds only what waits two minutes, and the tests'
        # 16 requests at once stay under the cap even when one API worker takes all their connections.
        "FACECHECK_BATCH_LATENCY_MS": "120000",
        "FACECHECK_MAX_CONCURRENCY": "64",
        "BENTOML_HOME": str(base / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        **settings,
    }
    try:
        with running_server(env, timeout_s=SERVER_START_S, log_path=log) as url:
            yield Server(url, data_root, data_root / "sorted", 2_000_000, 6, 8, log)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")
