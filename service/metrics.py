"""The service's own Prometheus metrics, next to BentoML's `bentoml_service_*` ones at /metrics.

BentoML serves /metrics from prometheus_client's multiprocess mode: every worker writes its samples
under PROMETHEUS_MULTIPROC_DIR, which `bentoml serve` puts in each worker's environment, and the API
worker's /metrics merges them. So plain prometheus_client metrics work, provided they are created in the
worker process: `get_metrics()` creates them on first use (a service's __init__), never at import.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from prometheus_client import Counter, Histogram

STAGES = ("decode", "detect", "crop", "classify")
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FACES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 20, 50)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)


@dataclass(frozen=True)
class Metrics:
    stage_seconds: Histogram
    faces_per_image: Histogram
    batch_size: Histogram
    predictions: Counter
    turned: Counter
    errors: Counter

    def observe_timings(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)


@lru_cache(maxsize=1)
def get_metrics() -> Metrics:
    return Metrics(
        stage_seconds=Histogram("facecheck_stage_seconds", "Time per image in each stage: decode, detect, crop, classify "
                                "(classify includes the wait for an adaptive batch)", ["stage"], buckets=_SECONDS),
        faces_per_image=Histogram("facecheck_faces_per_image", "Faces detected per image", buckets=_FACES),
        batch_size=Histogram("facecheck_classifier_batch_size", "Crops per ONNX Runtime call (adaptive batches; "
                             "a face brings one crop per TTA angle, two where the card mirrors)", buckets=_BATCH),
        predictions=Counter("facecheck_predictions", "Images classified, by verdict", ["label"]),
        turned=Counter("facecheck_turned", "Images read turned upright (a photo on its side), by degrees counter-clockwise", ["degrees"]),
        errors=Counter("facecheck_errors", "Refused requests and files, by reason", ["reason"]),
    )
