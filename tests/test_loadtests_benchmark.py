"""The benchmark's HTTP clients send each photo as a multipart body encoded once: the service must answer it
exactly as it answers requests' own upload of the same file. Its paired ratios are the median of adjacent pairs."""
from __future__ import annotations

import pytest
import requests

from loadtests.benchmark import Pair, Run, http_run, main, multipart_bodies, paired_ratios
from loadtests.images import Payload
from service_fixtures import encode, synthetic_face

def answer_without_timings(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "timings_ms"}


def test_a_pre_encoded_upload_is_answered_like_a_plain_one(server) -> None:
    payload = Payload("face.jpg", encode(synthetic_face(seed=3)))
    body, content_type = multipart_bodies([payload])[0]
    pre_encoded = requests.post(f"{server.url}/classify", data=body, headers={"Content-Type": content_type, **server.headers}, timeout=120)
    plain = requests.post(f"{server.url}/classify", files={"image": (payload.name, payload.data, payload.content_type)}, headers=server.headers, timeout=120)
    assert pre_encoded.status_code == plain.status_code == 200
    assert answer_without_timings(pre_encoded.json()) == answer_without_timings(plain.json())


def test_http_run_counts_every_answer_and_no_failures(server) -> None:
    payloads = [Payload(f"face{i}.jpg", encode(synthetic_face(seed=i))) for i in range(3)]
    run = http_run(server.url, payloads, clients=2, seconds=1.0, name="smoke")
    assert run.images >= 2 and run.failures == 0
    assert len(run.latencies_ms) == run.images


def rate(per_s: float) -> Run:
    return Run("row", 8, images=int(per_s * 10), seconds=10.0)


def test_paired_ratio_is_the_median_of_each_model_and_client_count() -> None:
    pairs = [Pair("float", 8, rate(20), rate(r)) for r in (10, 19, 30)] + [Pair("int8", 8, rate(20), rate(18))]
    ratios = dict((label.split(",")[1].strip(), value) for label, value in paired_ratios(pairs))
    assert ratios == {"float model (8 clients)": pytest.approx(0.95), "int8 model (8 clients)": pytest.approx(0.9)}
    assert "median of 3 adjacent pairs (range 0.50-1.50)" in paired_ratios(pairs)[0][0]


def test_a_negative_pair_count_is_refused() -> None:
    with pytest.raises(SystemExit, match="--pairs is a count"):
        main(["--pairs", "-1"])
