"""Health, docs, metrics, adaptive batching, and one image giving one answer on every path."""
from __future__ import annotations

import concurrent.futures
import functools
import shutil
import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service_fixtures import CROPS_PER_FACE, encode, shared_images, synthetic_face, tiny_png


def samples(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"{server.url}/metrics", timeout=120).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_livez_and_readyz(server):
    assert requests.get(f"{server.url}/livez", timeout=120).status_code == 200
    assert requests.get(f"{server.url}/readyz", timeout=120).status_code == 200


def test_openapi_document_and_docs_page(server):
    docs = requests.get(f"{server.url}/docs", timeout=120)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = requests.get(f"{server.url}/docs.json", timeout=120).json()
    classify = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert classify["properties"]["image"]["format"] == "binary" and "reject_no_face" in classify["properties"]
    batch = spec["paths"]["/classify_batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert batch["properties"]["images"]["type"] == "array"
    folder = spec["paths"]["/classify_folder"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(folder["properties"]) == {"folder", "recursive", "sort", "csv"}


def test_custom_metrics_count_a_request(server):
    before = samples(server)
    response = requests.post(f"{server.url}/classify", data=encode(synthetic_face(seed=11)), headers={"Content-Type": "image/jpeg"}, timeout=120)
    assert response.status_code == 200, response.text
    after = samples(server)
    for stage in ("decode", "detect", "crop", "classify"):
        assert value(after, "facecheck_stage_seconds_count", stage=stage) == value(before, "facecheck_stage_seconds_count", stage=stage) + 1
    assert value(after, "facecheck_faces_per_image_sum") == value(before, "facecheck_faces_per_image_sum") + 1
    label = response.json()["verdict"]
    assert value(after, "facecheck_predictions_total", label=label) == value(before, "facecheck_predictions_total", label=label) + 1
    assert value(after, "facecheck_classifier_batch_size_sum") >= value(before, "facecheck_classifier_batch_size_sum") + CROPS_PER_FACE
    requests.post(f"{server.url}/classify", data=b"junk", headers={"Content-Type": "image/jpeg"}, timeout=120)
    errors = samples(server)
    assert value(errors, "facecheck_errors_total", reason="not_an_image") == value(after, "facecheck_errors_total", reason="not_an_image") + 1


def test_concurrent_requests_share_classifier_batches(batched_server):
    """Adaptive batching: crops of concurrent requests reach ONNX Runtime in fewer, larger calls.

    Also more than 100 calls to the Classifier under concurrency: BentoML's default client-session
    renewal after 100 calls broke the calls in flight (500s); service.py turns it off.
    """
    crops, calls = classifier_calls(batched_server, requests_sent=120)
    assert crops == CROPS_PER_FACE * 120  # every request's TTA crops, each exactly once
    assert calls < 120, f"120 requests took {calls:g} ONNX Runtime calls: nothing was batched"
    assert "adaptive batching up to 64 crops" in batched_server.log.read_text()


def test_without_a_gpu_each_request_is_one_call_of_its_own_crops(server):
    """The default on CPU: no adaptive batching (it costs throughput there), so each request's crops, all
    its TTA rotations together, make one ONNX Runtime call; concurrent calls run side by side."""
    from service.config import get_settings

    if get_settings().adaptive_batch_size > 1:
        pytest.skip("adaptive batching is on by default here (the classifier runs on CUDA): see the test above")
    crops, calls = classifier_calls(server, requests_sent=120)
    assert (crops, calls) == (CROPS_PER_FACE * 120, 120)
    assert "adaptive batching off" in server.log.read_text()


def test_the_access_log_has_a_line_per_request_unless_turned_off(server, banded_server):
    """BentoML's access log is on by default; FACECHECK_ACCESS_LOG=false (banded_server) leaves it out."""
    photo = {"image": ("face.jpg", encode(synthetic_face()), "image/jpeg")}
    for target in (banded_server, server):  # the server without the log first: its line would be written by the time the other's is
        assert requests.post(f"{target.url}/classify", files=photo, headers=target.headers, timeout=120).status_code == 200
    deadline = time.monotonic() + 60
    while "path=/classify" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "path=/classify" in server.log.read_text()
    assert "path=/classify" not in banded_server.log.read_text()


def classifier_calls(server, requests_sent: int) -> tuple[float, float]:
    """Crops and ONNX Runtime calls the Classifier counted for `requests_sent` tiny photos sent 16 at a time, all answered 200."""
    tiny = tiny_png()  # no detection work: requests reach the classifier together
    before = samples(server)

    def send(_: int) -> tuple[int, str]:
        response = requests.post(f"{server.url}/classify", data=tiny, headers={"Content-Type": "image/png"}, timeout=120)
        return response.status_code, "" if response.ok else response.text

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(requests_sent)))
    assert [answer for answer in answers if answer[0] != 200] == []
    after = samples(server)
    crops = value(after, "facecheck_classifier_batch_size_sum") - value(before, "facecheck_classifier_batch_size_sum")
    calls = value(after, "facecheck_classifier_batch_size_count") - value(before, "facecheck_classifier_batch_size_count")
    return crops, calls


@pytest.fixture(scope="module")
def onnx_predict(tmp_path_factory):
    """training.scoring.predict_onnx with its face cache in a temporary folder."""
    from service.config import get_settings
    from service.onnx_model import read_card
    from training import scoring
    from training.cache import CachingDetector
    from training.data import Sample

    cache = tmp_path_factory.mktemp("face-cache")
    settings = get_settings()

    def predict(path):
        original = scoring.CachingDetector
        scoring.CachingDetector = functools.partial(CachingDetector, cache)
        try:
            result = scoring.predict_onnx(settings.model, [Sample(path, 1, "parity")], settings.angles_for(read_card(settings.model)), device="cpu")
        finally:
            scoring.CachingDetector = original
        assert not result.unreadable
        return float(result.probs[0]), bool(result.face_found[0])

    return predict


@pytest.mark.parametrize("source", ["synthetic", "shared"])
def test_one_image_one_answer_on_every_path(server, onnx_predict, tmp_path, source):
    if source == "shared":
        (path,) = shared_images("rff/real", 1)
        data = path.read_bytes()
    else:
        data = encode(synthetic_face(seed=5))
    name = f"parity-{uuid.uuid4().hex[:8]}"
    (server.data_root / name).mkdir()
    (server.data_root / name / "photo.jpg").write_bytes(data)
    local = tmp_path / "photo.jpg"
    local.write_bytes(data)

    single = requests.post(f"{server.url}/classify", files={"image": ("photo.jpg", data, "image/jpeg")}, timeout=120).json()
    batch = requests.post(f"{server.url}/classify_batch", files=[("images", ("photo.jpg", data, "image/jpeg"))] * 2, timeout=120).json()
    folder = requests.post(f"{server.url}/classify_folder", json={"folder": name}, timeout=120).json()
    offline, face_found = onnx_predict(local)
    shutil.rmtree(server.data_root / name)

    answers = [single, *(item["result"] for item in batch["results"]), folder["results"][0]["result"]]
    assert face_found and all(answer["face_found"] for answer in answers)
    for answer in answers:
        assert answer["faces"][0]["box"] == single["faces"][0]["box"]
        assert answer["fake_probability"] == pytest.approx(offline, abs=1e-5)
        assert answer["verdict"] == single["verdict"]
