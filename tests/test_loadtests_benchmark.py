"""The benchmark's HTTP clients send each photo as a multipart body encoded once: the service must answer it
exactly as it answers requests' own upload of the same file."""
from __future__ import annotations

import requests

from loadtests.benchmark import http_run, multipart_bodies
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
