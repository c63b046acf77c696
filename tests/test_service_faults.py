"""Overload and faults, against servers these tests start on loopback: bounded in requests and in time.

- a burst beyond capacity gets 200 or a JSON 503 for every request, and the server stays up;
- a request that runs past FACECHECK_REQUEST_TIMEOUT_S (here: an upload that stalls) gets a JSON 504;
- a missing, corrupt or wrong model stops `bentoml serve` at once, its log naming the problem;
- a worker killed with SIGKILL is replaced by BentoML's supervisor; calls in flight on a killed
  classifier are sent again, and later requests succeed.
- several API workers (FACECHECK_API_WORKERS) answer every request: on CPU each with the classifier in
  its own process, with adaptive batching all through the one Classifier.
"""
from __future__ import annotations

import concurrent.futures
import json
import http.client
import signal
import time
from pathlib import Path

import onnx
import psutil
import pytest
import requests

from loadtests.server import running_server, serve_process
from service.config import get_settings
from service_fixtures import SERVER_START_S, assert_error, assert_summary_adds_up, encode, server_env, synthetic_face, tiny_png

pytestmark = pytest.mark.slow
TINY = tiny_png()  # no detection work: the classifier is the bottleneck
FACE = encode(synthetic_face(seed=9))
RECOVERY_S = 600  # a generous budget: a worker restarts in seconds on an idle machine, far slower on a busy one


def workers(url: str, service: str) -> list[psutil.Process]:
    """The server's worker processes for `service` (FaceCheck or Classifier)."""
    return [child for child in serve_process(url).children() if f"--service-name {service}" in " ".join(child.cmdline())]


@pytest.fixture(scope="module", params=["4", "1"], ids=["batching", "no-batching"])
def busy_server(request, tmp_path_factory):
    """A 100 ms latency budget for the classifier, with adaptive batching at 4 crops (BentoML's dispatcher
    sheds) and without it (service.admission sheds): a few concurrent requests are more than it takes."""
    base = tmp_path_factory.mktemp("busy")
    log = base / "serve.log"
    env = server_env(base, FACECHECK_BATCH_SIZE=request.param, FACECHECK_BATCH_LATENCY_MS="100", FACECHECK_MAX_BATCH_FILES="6",
                     FACECHECK_MAX_CONCURRENCY="1000")  # every request of a burst reaches the classifier, which sheds
    try:
        with running_server(env, timeout_s=SERVER_START_S, log_path=log) as url:
            yield url, log
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}:\n{log.read_text()[-4000:]}")


def post(url: str, data: bytes = TINY, content_type: str = "image/png") -> requests.Response:
    return requests.post(f"{url}/classify", data=data, headers={"Content-Type": content_type}, timeout=120)


def test_burst_beyond_capacity_is_200_or_503(busy_server):
    url, log = busy_server
    batch_files = [("images", (f"{index}.png", TINY, "image/png")) for index in range(6)]

    def send(index: int) -> requests.Response:
        if index % 6 == 5:
            return requests.post(f"{url}/classify_batch", files=batch_files, timeout=120)
        return post(url)

    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(send, range(60)))
    statuses = [response.status_code for response in answers]
    assert set(statuses) <= {200, 503}, (statuses, log_tail(log))
    shed = 0
    for response in answers:
        if response.status_code == 503:
            assert_error(response, 503, "overloaded")
            assert response.headers["Retry-After"] == "1"
            shed += 1
        elif "summary" in response.json():  # a batch: each file answered, some perhaps with 503
            body = response.json()
            assert_summary_adds_up(body)
            assert len(body["results"]) == 6
            shed += sum(not item["ok"] for item in body["results"])
            assert {item["error"]["status"] for item in body["results"] if not item["ok"]} <= {503}
    assert shed > 0, "nothing was shed: the burst did not overload the server"
    assert requests.get(f"{url}/readyz", timeout=120).status_code == 200
    assert_recovers(url)
    assert "status=500" not in log.read_text()  # the access log of both workers


def log_tail(log: Path) -> str:
    """The end of a server's log, for a failure's message: the test's temporary folder may be gone before anyone reads it."""
    return log.read_text(errors="replace")[-6000:]


def assert_recovers(url: str, allowed: frozenset = frozenset({200, 503, 504})) -> requests.Response:
    """Polls with a face photo until one is classified; every answer meanwhile must be an expected one."""
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline:
        try:
            response = post(url, FACE, "image/jpeg")
        except requests.ConnectionError:
            time.sleep(0.5)
            continue
        assert response.status_code in allowed, response.text
        if response.status_code == 200:
            assert response.json()["face_found"]
            return response
        time.sleep(0.5)
    pytest.fail(f"no request succeeded within {RECOVERY_S} s")


def test_classifier_killed_mid_run(busy_server):
    """SIGKILL the Classifier worker while requests are in flight: no 500, a new worker, and success after.

    The calls the dead worker had taken are sent again and wait for its replacement, so none is answered
    "classifier_unavailable"; a 503 here is the classifier shedding load, or, where the replacement takes
    longer than the Classifier's timeout to start (a busy machine), a call that waited for it that long.
    Either is JSON with Retry-After."""
    url, log = busy_server
    if not workers(url, "Classifier"):
        pytest.skip("without adaptive batching the API workers run the classifier themselves: test_api_worker_killed")
    (victim,) = workers(url, "Classifier")

    def send(index: int) -> tuple[int, str]:
        time.sleep(index * 0.02)
        response = post(url)
        return response.status_code, response.json().get("reason", "") if response.status_code != 200 else ""

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(send, index) for index in range(48)]
        time.sleep(0.4)
        victim.send_signal(signal.SIGKILL)
        answers = [future.result() for future in futures]
    assert set(answers) <= {(200, ""), (503, "overloaded"), (503, "classifier_timeout")}, (answers, log_tail(log))
    assert_recovers(url)
    assert [w.pid for w in workers(url, "Classifier")] != [victim.pid]
    assert "status=500" not in log.read_text()


def test_api_worker_killed(busy_server):
    """SIGKILL a FaceCheck (API) worker: the supervisor starts another on the same socket."""
    url, _ = busy_server
    before = workers(url, "FaceCheck")
    victim = before[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    assert_recovers(url, frozenset({200}))
    deadline = time.monotonic() + RECOVERY_S
    while len(workers(url, "FaceCheck")) < len(before) and time.monotonic() < deadline:
        time.sleep(0.5)
    now = [w.pid for w in workers(url, "FaceCheck")]
    assert len(now) == len(before) and victim.pid not in now, now
    assert requests.get(f"{url}/readyz", timeout=120).status_code == 200


def test_request_timeout_is_504(tmp_path):
    """An upload that stalls is cut off after FACECHECK_REQUEST_TIMEOUT_S rather than holding a worker."""
    log = tmp_path / "serve.log"
    with running_server(server_env(tmp_path, FACECHECK_REQUEST_TIMEOUT_S="2"), timeout_s=SERVER_START_S, log_path=log) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=RECOVERY_S)
        connection.putrequest("POST", "/classify")
        connection.putheader("Content-Type", "image/jpeg")
        connection.putheader("Content-Length", "100000")
        connection.endheaders(FACE[:100])  # and the other 99 900 bytes never come
        answer = connection.getresponse()  # cut off by the server, not left to hang until the client gives up
        body = json.loads(answer.read())
        assert (answer.status, answer.getheader("Content-Type")) == (504, "application/json")
        assert body == {"error": "not able to process the request in 2 seconds (FACECHECK_REQUEST_TIMEOUT_S)", "status": 504, "reason": "timeout"}
        connection.close()
        assert post(url).status_code == 200  # and the server still answers


@pytest.mark.parametrize("batch_size, classifiers", [("1", 0), ("64", 1)], ids=["inline", "batching"])
def test_several_api_workers_answer_every_request(tmp_path, batch_size, classifiers):
    """FACECHECK_API_WORKERS=3: three FaceCheck processes on the one socket, every request answered; each runs
    the classifier itself without adaptive batching, and all share one Classifier with it."""
    log = tmp_path / "serve.log"
    # a latency budget no busy machine reaches: this is about every worker answering, not about shedding load
    env = server_env(tmp_path, FACECHECK_API_WORKERS="3", FACECHECK_BATCH_SIZE=batch_size, FACECHECK_BATCH_LATENCY_MS="120000")
    with running_server(env, timeout_s=SERVER_START_S, log_path=log) as url:
        assert (len(workers(url, "FaceCheck")), len(workers(url, "Classifier"))) == (3, classifiers)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post(url, FACE, "image/jpeg"), range(12)))
        assert [a.status_code for a in answers] == [200] * 12
        assert {len(a.json()["faces"]) for a in answers} == {1}


def default_model() -> onnx.ModelProto:
    return onnx.load(str(get_settings().model))


def bare_model(path: Path) -> None:
    proto = default_model()
    del proto.metadata_props[:]
    onnx.save(proto, str(path))


def lying_model(path: Path) -> None:
    proto = default_model()
    for prop in proto.metadata_props:
        if prop.key == "facecheck.card":
            card = json.loads(prop.value)
            card["preprocess"]["input_size"] += 32
            prop.value = json.dumps(card)
    onnx.save(proto, str(path))


MODEL_FAULTS = {
    "missing": (lambda path: None, "model file not found"),
    "corrupt": (lambda path: path.write_bytes(get_settings().model.read_bytes()[:4096]), "is not a loadable ONNX model"),
    "no card": (bare_model, "carries no 'facecheck.card' metadata"),
    "lying card": (lying_model, "does not match the card's"),
}


@pytest.mark.parametrize("fault", list(MODEL_FAULTS))
def test_bad_model_stops_the_server_with_a_clear_message(tmp_path, fault):
    make, message = MODEL_FAULTS[fault]
    model = tmp_path / "model.onnx"
    make(model)
    log = tmp_path / "serve.log"
    env = server_env(tmp_path, FACECHECK_MODEL=str(model))
    with pytest.raises(RuntimeError, match="exited with code 1 before it was ready"):  # not a TimeoutError: it stopped by itself
        with running_server(env, timeout_s=RECOVERY_S, log_path=log):
            pass  # /readyz answered 200: the server came up on a bad model
    text = log.read_text()
    assert "facecheck: error: " in text and message in text and str(model) in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]  # one line that names the problem, not a stack


def test_a_malformed_uncertain_band_stops_the_server_with_a_clear_message(tmp_path):
    log = tmp_path / "serve.log"
    env = server_env(tmp_path, FACECHECK_UNCERTAIN_BAND="0.7,0.4")
    with pytest.raises(RuntimeError, match="exited with code 1 before it was ready"):
        with running_server(env, timeout_s=RECOVERY_S, log_path=log):
            pass  # /readyz answered 200: the server came up with a band it cannot mean
    text = log.read_text()
    assert "facecheck: error: FACECHECK_UNCERTAIN_BAND: the uncertain band LOW,HIGH needs 0 <= LOW <= HIGH <= 1; got '0.7,0.4'" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
