"""The BentoML service: `bentoml serve` from the repository root serves FaceCheck (see bentofile.yaml).

FaceCheck (the API) decodes, finds faces and crops. With adaptive batching (by default on a GPU), the
ONNX model runs in a second service, as BentoML's batching wants it: Classifier, one batchable method in
its own worker, which FaceCheck reaches through `bentoml.depends`, so each call goes over HTTP to the
batching dispatcher that groups the crops of concurrent requests into one ONNX Runtime call. Without it
(by default on CPU), each API worker runs the model itself: the hop to a Classifier cost a third of the
service's throughput (docs/benchmarks.md). A photo's crops, every face with its TTA rotations, always
travel together in one call. The logic lives in plain
modules: engine (the work), uploads (request parsing), folders, batch, annotate (the drawn picture),
errors and metrics; gate (with keys and limits) checks who may call, and how much, in front of the
endpoints. For people rather than programs, GET /ui serves one static page (service/static/index.html)
that uploads photos to /classify and draws the answer.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from service.admission import Admission
from service.batch import batch_result
from service.config import Settings, get_settings, settings_error
from service.contract import ModelCard, ModelLoadError
from service.engine import Classify, Engine, Source, local_classifier
from service.errors import ServiceError, document_errors
from service.faces import FaceDetector, configured_detector, detector_device
from service.folders import SortedCopier, list_files, resolve_folder
from service.gate import Deadline, Gate, JsonErrors
from service.keys import ApiKeys, KeysError, warn_if_exposed
from service.memory import start_trimming
from service.metrics import Metrics, get_metrics
from service.onnx_model import OnnxClassifier, read_card
from service.orientation import configured_orientation
from service.pipeline import Pipeline
from service.schemas import BatchResult, ImageResult
from service.uploads import BatchInput, ClassifyInput, FolderInput, parse_bool, read_batch_request, read_folder_request, read_image_request

log = logging.getLogger("bentoml.facecheck")


def _read_at_start() -> tuple[Settings, ApiKeys, ModelCard]:
    """Read at import, which `bentoml serve` does in its own process before it starts any worker: a bad
    setting, unreadable keys, or a missing or corrupt model (or orientation network) stop the server with one line that names it,
    rather than a traceback or workers in a restart loop. A server that listens beyond loopback without keys says so first."""
    try:
        settings = get_settings()
        keys = ApiKeys.from_settings(settings)
        warn_if_exposed(keys, log)
        card = read_card(settings.model)
        configured_orientation()  # loaded once here so that a bad one stops the server, not its workers
        return settings, keys, card
    except ValidationError as exc:
        raise SystemExit(f"facecheck: error: {settings_error(exc)}") from None
    except (KeysError, ModelLoadError) as exc:
        raise SystemExit(f"facecheck: error: {exc}") from None


settings, KEYS, CARD = _read_at_start()
document_errors()
PAGE = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")


# glibc keeps freed memory in per-thread arenas (8 per core) and, as its mmap threshold raises itself,
# puts image-sized buffers there too, where freed holes cannot go back: the API worker grew ~30 MB/min
# with a flat live heap. Two arenas, buffers of 4 MiB and more mmapped, and service.memory's trimming
# hold it flat (docs/reliability.md). A lower threshold holds less memory but costs CPU: at 1 MiB, the
# ~1.5 MB tensors of face detection were each mapped and faulted in afresh, 15% more CPU per photo.
# The environment wins.
MALLOC_ENVS = [{"name": "MALLOC_ARENA_MAX", "value": "2"}, {"name": "MALLOC_MMAP_THRESHOLD_", "value": "4194304"}]


# BentoML 1.4.39 renews its client session to a dependency every runner_connection.max_requests calls
# (default 100) or max_age seconds (default 300) by closing the old session under the calls still in
# flight on it; they fail with aiohttp's ServerDisconnectedError, a 500 for the caller. Our dependency
# is a local socket with nothing to rebalance, so the session lives as long as the worker.
# BentoML's timeout middleware schedules a timer per request that is never cancelled, and the timer holds
# the request's context (its OpenTelemetry span, uvicorn's request cycle) until it fires: a worker keeps
# every request of the last `timeout` seconds alive. The Classifier, which takes a call per photo and
# answers each within a second or so, gets a short timeout, so that this is a minute of calls.
CLASSIFIER_TIMEOUT_S = min(60, settings.request_timeout_s)
# service.gate.Deadline answers a request past FACECHECK_REQUEST_TIMEOUT_S with our JSON; BentoML's own timeout,
# whose 504 body is its own, fires this much later and stays a backstop.
TIMEOUT_BACKSTOP_S = 30
# Adaptive batching pays where the classifier runs on a GPU. On CPU, ONNX Runtime runs 48 crops no faster
# per crop than 3, and BentoML's dispatcher runs one batch at a time: off by default (docs/benchmarks.md).
BATCH_SIZE = settings.adaptive_batch_size
BATCHING = not settings.inline_classifier


@bentoml.service(traffic={"timeout": CLASSIFIER_TIMEOUT_S}, envs=MALLOC_ENVS,
                 runner_connection={"max_requests": 2**31 - 1, "max_age": 10.0**9})
class Classifier:
    def __init__(self) -> None:
        self.model = loaded_classifier()
        # BentoML's dispatcher runs one batch at a time and sheds load by itself.
        self.classify = local_classifier(self.model, get_metrics())
        log.info("classifier %s %s on %s, adaptive batching up to %d crops", self.model.card.name, self.model.card.version, self.model.provider, BATCH_SIZE)

    def __is_ready__(self) -> bool:
        return self.model is not None

    # BentoML wants max_batch_size > 1 even where batchable is False.
    @bentoml.api(batchable=BATCHING, max_batch_size=max(2, BATCH_SIZE), max_latency_ms=settings.batch_latency_ms)
    async def predict(self, crops: np.ndarray) -> np.ndarray:
        """Fake probabilities (N,) for face crops (N, H, W, 3) uint8."""
        return await self.classify(crops)


def loaded_classifier() -> OnnxClassifier:
    model = OnnxClassifier(settings.model, settings.device, settings.classifier_cpu_threads)
    model.warm_up()  # before /readyz says ready, and before adaptive batching times its first calls
    return model


def inline_classifier(metrics: Metrics) -> Classify:
    """The model in this API worker, with calls past what its share of the cores holds shed as 503 (service.admission)."""
    model = loaded_classifier()
    log.info("classifier %s %s on %s in the API worker, %d ONNX Runtime threads, adaptive batching off",
             model.card.name, model.card.version, model.provider, settings.classifier_cpu_threads)
    return local_classifier(model, metrics, Admission(settings.classifier_calls_at_once, settings.batch_latency_ms / 1000.0))


async def _docs(_: Request) -> RedirectResponse:
    return RedirectResponse("/")  # BentoML serves Swagger UI at / and the OpenAPI document at /docs.json


async def _page(_: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


@bentoml.service(traffic={"timeout": settings.request_timeout_s + TIMEOUT_BACKSTOP_S}, envs=MALLOC_ENVS, workers=settings.api_workers,
                 logging={"access": {"enabled": settings.access_log}})
@bentoml.asgi_app(Starlette(routes=[Route("/docs", _docs), Route("/ui", _page)]))
class FaceCheck:
    if BATCHING:
        classifier = bentoml.depends(Classifier)

    def __init__(self) -> None:
        self.metrics = get_metrics()
        start_trimming()
        detector = FaceDetector(configured_detector(), device=detector_device(settings.device))
        self.pipeline = Pipeline(CARD, detector, settings.angles_for(CARD), settings.max_faces, settings.band_for(CARD),
                                 orientation=configured_orientation())
        classify = self._classify if BATCHING else inline_classifier(self.metrics)
        self.engine = Engine(self.pipeline, classify, settings.max_bytes, settings.max_pixels, self.metrics, settings.formats)
        log.info("face detector on %s; model card %s %s", detector.device, self.pipeline.card.name, self.pipeline.card.version)

    def __is_ready__(self) -> bool:
        # With a Classifier, /readyz also asks its own /readyz (BentoML's runner probe).
        return self.engine is not None

    async def _classify(self, crops: np.ndarray) -> np.ndarray:
        return await self.classifier.predict(crops)

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, request: Request) -> ImageResult:
        """Classify one photo: every face found (most-fake face decides), or the whole image when none is."""
        async def work() -> ImageResult:
            source, fields = await read_image_request(request, settings.max_bytes)
            reject = parse_bool(fields.get("reject_no_face"), "reject_no_face")
            return await self.engine.classify_source(source, reject)
        return await self._answer(work())

    @bentoml.api(route="/annotate", input_spec=ClassifyInput)
    async def annotate(self, request: Request) -> Annotated[Path, ContentType("image/png")]:
        """The photo as a PNG of its own size: each face boxed (red fake, green real, amber uncertain) with its fake probability,
        and a banner with the image's verdict, saying so when no face was found. Same input as /classify;
        the verdict also comes in the X-Facecheck-Verdict and X-Facecheck-Fake-Probability headers."""
        async def work() -> Response:
            source, fields = await read_image_request(request, settings.max_bytes)
            reject = parse_bool(fields.get("reject_no_face"), "reject_no_face")
            png, result = await self.engine.annotate_source(source, reject)
            return Response(png, media_type="image/png", headers={
                "X-Facecheck-Verdict": result.verdict, "X-Facecheck-Fake-Probability": repr(result.fake_probability),
                "X-Facecheck-Faces": str(len(result.faces))})
        return await self._answer(work())

    @bentoml.api(route="/classify_batch", input_spec=BatchInput)
    async def classify_batch(self, request: Request) -> BatchResult:
        """Classify many uploaded photos: one result per file, in order, errors included."""
        async def work() -> BatchResult:
            sources, fields = await read_batch_request(request, settings.max_bytes, settings.max_batch_files)
            return await self._batch(sources, parse_bool(fields.get("sort"), "sort"), parse_bool(fields.get("csv"), "csv"))
        return await self._answer(work())

    @bentoml.api(route="/classify_folder", input_spec=FolderInput)
    async def classify_folder(self, request: Request) -> BatchResult:
        """Classify every file of a folder under the data root: one result per file, sorted by name."""
        async def work() -> BatchResult:
            body = await read_folder_request(request)
            root = settings.data_root
            folder = resolve_folder(root, body.folder)
            files = await anyio.to_thread.run_sync(list_files, root, folder, body.recursive, settings.max_batch_files, settings.sorted_root)
            sources = [Source(file.name, lambda file=file: file.read(settings.max_bytes)) for file in files]
            return await self._batch(sources, body.sort, body.csv)
        return await self._answer(work())

    async def _batch(self, sources: list[Source], sort: bool, with_csv: bool) -> BatchResult:
        copier = SortedCopier(settings.sorted_root) if sort else None
        return batch_result(await self.engine.classify_sources(sources, copier), with_csv)

    async def _answer(self, work):
        try:
            return await work
        except ServiceError as exc:
            self.metrics.errors.labels(reason=exc.reason).inc()
            return exc.response()


# Outermost first: JSON for every error, the timeout, then keys, rate and requests in flight (service/gate.py).
FaceCheck.add_asgi_middleware(JsonErrors)
FaceCheck.add_asgi_middleware(Deadline, timeout_s=settings.request_timeout_s)
FaceCheck.add_asgi_middleware(Gate, keys=KEYS, metrics_need_key=settings.metrics_need_key,
                              in_flight=math.ceil(settings.max_concurrency / settings.api_workers), rate_per_minute=settings.rate_per_minute)
