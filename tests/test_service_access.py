"""Who may call the service and how much, against real servers: API keys on every data endpoint, health
left open, keys kept out of logs and metrics, the per-key rate and the cap on requests in flight (429 with
Retry-After), JSON for the errors Starlette answers itself, and sorted copies that never follow a link out.
"""
from __future__ import annotations

import hashlib
import http.client
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from loadtests.server import REPO, free_port, running_server
from service.folders import LABELS
from service_fixtures import ENV_KEY, FILE_KEY, SERVER_START_S, WRONG_KEY, assert_error, encode, server_env, synthetic_face, tiny_png

pytestmark = pytest.mark.slow
FACE = encode(synthetic_face(seed=21))
TINY = tiny_png()  # no detection work
ENDPOINTS = ["/classify", "/annotate", "/classify_batch", "/classify_folder"]
RATE = 2  # per minute, on the rated server: a token every 30 s
PATIENCE_S = 600  # a generous budget for what must happen, however busy the machine


def call(server, endpoint: str, headers: dict[str, str], folder: str = "") -> requests.Response:
    url = f"{server.url}{endpoint}"
    if endpoint == "/classify_batch":
        return requests.post(url, files=[("images", ("face.jpg", FACE, "image/jpeg"))], headers=headers, timeout=120)
    if endpoint == "/classify_folder":
        return requests.post(url, json={"folder": folder}, headers=headers, timeout=120)
    return requests.post(url, files={"image": ("face.jpg", FACE, "image/jpeg")}, headers=headers, timeout=120)


@pytest.fixture()
def folder(keyed_server) -> str:
    name = f"keyed-{uuid.uuid4().hex[:8]}"
    (keyed_server.data_root / name).mkdir()
    (keyed_server.data_root / name / "face.jpg").write_bytes(FACE)
    return name


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_data_endpoint_needs_a_key(keyed_server, folder, endpoint):
    missing = call(keyed_server, endpoint, {}, folder)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ({"Authorization": f"Bearer {WRONG_KEY}"}, {"X-API-Key": WRONG_KEY}, {"Authorization": f"Basic {ENV_KEY}"}):
        refused = call(keyed_server, endpoint, wrong, folder)
        assert_error(refused, 401, "unauthorized")
        assert refused.content == missing.content  # a wrong key learns no more than no key
    for right in ({"Authorization": f"Bearer {ENV_KEY}"}, {"X-API-Key": ENV_KEY}, {"Authorization": f"Bearer {FILE_KEY}"}):
        answer = call(keyed_server, endpoint, right, folder)
        assert answer.status_code == 200, answer.text
        if endpoint == "/annotate":
            assert answer.content.startswith(b"\x89PNG") and answer.headers["X-Facecheck-Faces"] == "1"
        elif endpoint == "/classify":
            assert answer.json()["face_found"]
        else:
            assert answer.json()["summary"]["files"] == 1 and answer.json()["results"][0]["ok"]


def test_health_docs_and_the_page_stay_open_and_metrics_needs_a_key_when_set(keyed_server):
    for path in ("/livez", "/readyz", "/docs", "/docs.json", "/ui"):
        assert requests.get(f"{keyed_server.url}{path}", timeout=120).status_code == 200, path
    assert_error(requests.get(f"{keyed_server.url}/metrics", timeout=120), 401, "unauthorized")
    metrics = requests.get(f"{keyed_server.url}/metrics", headers={"X-API-Key": FILE_KEY}, timeout=120)
    assert metrics.status_code == 200 and 'facecheck_errors_total{reason="unauthorized"}' in metrics.text
    assert_error(requests.get(f"{keyed_server.url}/no/such/page", timeout=120), 401, "unauthorized")  # unknown paths are not open


def test_keys_never_appear_in_logs_metrics_or_answers(keyed_server, folder):
    answers = [call(keyed_server, "/classify", {"Authorization": f"Bearer {key}"}) for key in (ENV_KEY, FILE_KEY, WRONG_KEY)]
    answers.append(requests.get(f"{keyed_server.url}/metrics", headers=keyed_server.headers, timeout=120))
    texts = [answer.text for answer in answers] + [keyed_server.log.read_text()]
    for key in (ENV_KEY, FILE_KEY, WRONG_KEY):
        for secret in (key, hashlib.sha256(key.encode()).hexdigest()):
            assert not any(secret in text for text in texts), key


def test_sorted_copies_never_follow_a_link_out_of_the_output_root(keyed_server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = keyed_server.sorted_root
    shutil.rmtree(root, ignore_errors=True)  # what other tests sorted there (the fuzzer's sort=true cases) is no part of this one
    root.mkdir(parents=True)
    sort = {"sort": "true"}
    files = [("images", ("face.jpg", FACE, "image/jpeg"))]
    links = [root / label for label in LABELS]
    for link in links:  # each label folder a link out of the root
        link.symlink_to(outside, target_is_directory=True)
    try:
        body = requests.post(f"{keyed_server.url}/classify_batch", files=files, params=sort, headers=keyed_server.headers, timeout=120).json()
    finally:
        for link in links:
            link.unlink()
    (item,) = body["results"]
    assert item["result"]["face_found"] and not item["ok"] and item["sorted_to"] is None
    assert (item["error"]["status"], item["error"]["reason"]) == (403, "path_outside_root")
    assert list(outside.iterdir()) == []

    planted = outside / "planted.jpg"
    for label in LABELS:  # a link out in place of the copy's own name counts as taken, and is not written through
        (root / label).mkdir(exist_ok=True)
        (root / label / "face.jpg").symlink_to(planted)
    body = requests.post(f"{keyed_server.url}/classify_batch", files=files, params=sort, headers=keyed_server.headers, timeout=120).json()
    (item,) = body["results"]
    assert item["ok"] and item["sorted_to"] == f"{item['result']['verdict']}/face-1.jpg"
    assert (root / item["sorted_to"]).read_bytes() == FACE and not planted.exists()


def limited_server(base: Path, **settings: str):
    log = base / "serve.log"
    try:
        with running_server(server_env(base, FACECHECK_BATCH_LATENCY_MS="120000", **settings), timeout_s=SERVER_START_S, log_path=log) as url:
            yield url
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """Two API workers sharing a rate of RATE requests a minute per key; keys D and E."""
    yield from limited_server(tmp_path_factory.mktemp("rated"), FACECHECK_RATE_PER_MINUTE=str(RATE), FACECHECK_API_KEYS="key-d-0001,key-e-0002")


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """One API worker that holds one request at a time (FACECHECK_MAX_CONCURRENCY=1); no keys."""
    yield from limited_server(tmp_path_factory.mktemp("capped"), FACECHECK_API_WORKERS="1", FACECHECK_MAX_CONCURRENCY="1")


def post_tiny(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{url}/classify", data=TINY, headers={"Content-Type": "image/png", **(headers or {})}, timeout=120)


def test_a_key_past_its_rate_gets_429_with_retry_after(rated):
    """Each request on a connection of its own, so both workers take some: the bucket is the key's, not a worker's."""
    started = time.monotonic()
    answers = []
    while not answers or answers[-1].status_code == 200:
        assert len(answers) < 50, "no 429 after 50 requests"
        answers.append(post_tiny(rated, {"X-API-Key": "key-d-0001"}))
    elapsed = time.monotonic() - started
    refused = answers[-1]
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 / RATE
    # the bucket's RATE, and at most what it refilled meanwhile; a bucket per worker would have let 2 * RATE through
    assert RATE <= len(answers) - 1 <= RATE + elapsed * RATE / 60
    assert post_tiny(rated, {"X-API-Key": "key-e-0002"}).status_code == 200  # another key has its own bucket
    assert requests.get(f"{rated}/readyz", timeout=120).status_code == 200


def test_a_request_past_the_cap_gets_429_busy_and_health_stays_open(capped):
    """An upload that stalls holds the worker's one slot; meanwhile other requests are refused, health is not."""
    host, port = capped.removeprefix("http://").split(":")
    stalled = http.client.HTTPConnection(host, int(port), timeout=120)
    stalled.putrequest("POST", "/classify")
    stalled.putheader("Content-Type", "image/jpeg")
    stalled.putheader("Content-Length", str(len(FACE)))
    stalled.endheaders(FACE[:100])
    try:
        deadline = time.monotonic() + PATIENCE_S
        while (answer := post_tiny(capped)).status_code == 200:  # until the stalled upload has reached the worker
            assert time.monotonic() < deadline, "the stalled upload never held the slot"
            time.sleep(0.2)
        assert_error(answer, 429, "busy")
        assert answer.headers["Retry-After"] == "1"
        for path in ("/livez", "/readyz", "/metrics"):
            assert requests.get(f"{capped}{path}", timeout=120).status_code == 200, path
        stalled.send(FACE[100:])
        finished = stalled.getresponse()
        assert finished.status == 200 and b'"face_found":true' in finished.read()
    finally:
        stalled.close()
    assert post_tiny(capped).status_code == 200  # the slot is free again


def test_errors_starlette_answers_itself_are_json(server):
    assert_error(requests.get(f"{server.url}/no/such/page", timeout=120), 404, "not_found")
    wrong_method = requests.get(f"{server.url}/classify", timeout=120)
    assert_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["Allow"]


def test_an_unreadable_keys_file_stops_the_server(tmp_path):
    missing = tmp_path / "missing.txt"
    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeError, match="exited with code 1 before it was ready"):
        with running_server(server_env(tmp_path, FACECHECK_API_KEYS_FILE=str(missing)), timeout_s=SERVER_START_S, log_path=log):
            pass  # /readyz answered 200: the server came up without the keys it was told to use
    text = log.read_text()
    assert f"facecheck: error: FACECHECK_API_KEYS_FILE: cannot read {missing}" in text and "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize(("host", "keys", "warned"), [("0.0.0.0", "", True), ("0.0.0.0", "some-key-1234", False), ("127.0.0.1", "", False)])
def test_start_up_warns_when_listening_beyond_loopback_without_keys(tmp_path, host, keys, warned):
    """`bentoml serve --host HOST`, whose model is missing: the warning (or none) comes at import, and the
    server stops on the missing model before it ever listens."""
    env = server_env(tmp_path, FACECHECK_MODEL=str(tmp_path / "missing.onnx"), FACECHECK_API_KEYS=keys)
    bentoml = Path(sys.executable).with_name("bentoml")
    done = subprocess.run([str(bentoml), "serve", "--host", host, "--port", str(free_port())], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=PATIENCE_S)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "model file not found" in output, output[-3000:]
    assert (f"facecheck listens on {host} without API keys" in output) == warned, output[-3000:]
