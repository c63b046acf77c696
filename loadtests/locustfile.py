"""Locust scenarios against a running facecheck service.

    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 Moderator
or headless, with a server it starts and stops itself:  .venv/bin/python -m loadtests.run [--scenario photo400]

Moderator: realistic traffic (sizes 128-1024 px, some group photos, batches, junk).
Photo400: 400x400 one-face photos back to back, no pause.
Crowd: many clients with photos of every size, each honouring a 429's Retry-After: the 64-user run of
docs/reliability.md against a capped server.

Where the server has API keys, FACECHECK_LOAD_API_KEY is the key every user sends (`--api-key` of loadtests.run).
"""
from __future__ import annotations

import os
import random
import time

from locust import HttpUser, between, constant, task

from loadtests.images import Payload, bad_payloads, mixed_payloads, single_face_payloads

MIXED = mixed_payloads()
BAD = bad_payloads()
SINGLE_400 = single_face_payloads(400)


def classify_photo(user: HttpUser, payloads: list[Payload], name: str) -> None:
    """POST one of the payloads to /classify; anything but a 200 with a verdict is a failure."""
    payload = random.choice(payloads)
    files = {"image": (payload.name, payload.data, payload.content_type)}
    with user.client.post("/classify", files=files, name=name, catch_response=True) as response:
        if response.status_code != 200 or "verdict" not in response.json():
            response.failure(f"{response.status_code}: {response.text[:200]}")


class KeyedUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        if key := os.environ.get("FACECHECK_LOAD_API_KEY"):
            self.client.headers["Authorization"] = f"Bearer {key}"


class Moderator(KeyedUser):
    """Checks single photos, now and then a handful at once, and sometimes sends junk."""

    wait_time = between(0.05, 0.3)

    @task(20)
    def classify_one(self) -> None:
        classify_photo(self, MIXED, "/classify")

    @task(2)
    def classify_batch(self) -> None:
        chosen = random.sample(MIXED, 4)
        files = [("images", (p.name, p.data, p.content_type)) for p in chosen]
        with self.client.post("/classify_batch", files=files, name="/classify_batch", catch_response=True) as response:
            body = response.json() if response.status_code == 200 else {}
            if len(body.get("results", [])) != len(chosen):
                response.failure(f"{response.status_code}: expected {len(chosen)} results")

    @task(1)
    def junk(self) -> None:
        payload = random.choice(BAD)
        files = {"image": (payload.name, payload.data, payload.content_type)}
        with self.client.post("/classify", files=files, name="/classify [bad input]", catch_response=True) as response:
            if response.status_code in (400, 413, 422):
                response.success()
            else:
                response.failure(f"bad input answered {response.status_code}")


class Photo400(KeyedUser):
    """Sends 400x400 one-face photos to /classify back to back: the throughput scenario of docs/benchmarks.md."""

    wait_time = constant(0)

    @task
    def classify_one(self) -> None:
        classify_photo(self, SINGLE_400, "/classify 400px")


class Crowd(KeyedUser):
    """Sends photos one after another, and on a 429 waits its Retry-After, as a well-behaved client does. A 429 is the
    server's answer to too many at once and gets its own row ("/classify [429 busy]"), not a failure; any other answer
    but a 200 with a verdict is one. Now and then asks /readyz, which must answer 200 however busy the server is."""

    wait_time = between(0, 0.2)

    @task(20)
    def classify_one(self) -> None:
        payload = random.choice(MIXED)
        files = {"image": (payload.name, payload.data, payload.content_type)}
        retry_after_s = 0.0
        with self.client.post("/classify", files=files, name="/classify", catch_response=True) as response:
            if response.status_code == 429 and "Retry-After" in response.headers:
                response.request_meta["name"] = f"/classify [429 {response.json().get('reason')}]"
                retry_after_s = float(response.headers["Retry-After"])
                response.success()
            elif response.status_code != 200 or "verdict" not in response.json():
                response.failure(f"{response.status_code}: {response.text[:200]}")
        time.sleep(retry_after_s)

    @task(1)
    def ready(self) -> None:
        with self.client.get("/readyz", name="/readyz", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"/readyz answered {response.status_code}")
