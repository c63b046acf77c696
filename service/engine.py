"""The service's work for one image or many, independent of BentoML.

An image is decoded, its faces found and cropped (in a worker thread: that is CPU or GPU work), then its
crops are awaited from `classify`: in the service, the Classifier dependency, whose adaptive batching
groups the crops of concurrent images into one ONNX Runtime call. Client errors come out as
ServiceError; per-file errors of a batch become items of the answer.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import anyio.to_thread
import numpy as np

from service.errors import ServiceError, from_classifier_error, from_image_error
from service.folders import SortedCopier
from service.imaging import ImageError, decode_image
from service.metrics import Metrics
from service.pipeline import Pipeline, Prepared
from service.schemas import BatchItem, ImageResult

Classify = Callable[[np.ndarray], Awaitable[np.ndarray]]
# Images decoded and searched for faces at once in one worker: bounds memory (a decoded image can
# reach FACECHECK_MAX_PIXELS * 3 bytes) and keeps MTCNN from oversubscribing the CPU.
PREPARE_CONCURRENCY = min(4, os.cpu_count() or 1)
# Files of one batch request in flight at once: enough to keep the classifier's batches full.
BATCH_CONCURRENCY = 8


@dataclass(frozen=True)
class Source:
    """One input file: its name in the answer, and how to read its bytes (called in a worker thread).

    `read` returns at most max_bytes + 1 bytes, so that decoding can tell an oversized file, or raises
    a ServiceError for a file that must not be read.
    """

    name: str
    read: Callable[[], bytes]


class Engine:
    def __init__(self, pipeline: Pipeline, classify: Classify, max_bytes: int, max_pixels: int, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.classify = classify
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.metrics = metrics
        self._prepare_slots: asyncio.Semaphore | None = None

    async def classify_source(self, source: Source, reject_no_face: bool = False) -> ImageResult:
        data = await anyio.to_thread.run_sync(source.read)
        return await self.classify_bytes(data, source.name, reject_no_face)

    async def classify_bytes(self, data: bytes, file: str, reject_no_face: bool = False) -> ImageResult:
        prepared = await self._prepare(data, file)
        if reject_no_face and not prepared.faces:
            raise ServiceError("no face found in the image (reject_no_face is set)", 422, "no_face")
        started = time.perf_counter()
        try:
            probs = await self.classify(prepared.inputs)
        except Exception as exc:
            mapped = from_classifier_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        classify_ms = round((time.perf_counter() - started) * 1000.0, 3)
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        if len(probs) != len(prepared.inputs):
            raise RuntimeError(f"the classifier answered {len(probs)} probabilities for {len(prepared.inputs)} crops")
        result = self.pipeline.assemble(prepared, probs, classify_ms)
        self.metrics.stage_seconds.labels(stage="classify").observe(classify_ms / 1000.0)
        self.metrics.predictions.labels(label=result.verdict).inc()
        return result

    async def classify_sources(self, sources: Sequence[Source], copier: SortedCopier | None = None) -> list[BatchItem]:
        """One item per source, in order; a file's error is its item's, never the whole answer's."""
        slots = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(source: Source) -> BatchItem:
            async with slots:
                try:
                    data = await anyio.to_thread.run_sync(source.read)
                    result = await self.classify_bytes(data, source.name)
                except ServiceError as exc:
                    self.metrics.errors.labels(reason=exc.reason).inc()
                    return BatchItem(file=source.name, ok=False, error=exc.file_error(source.name))
                if copier is None:
                    return BatchItem(file=source.name, ok=True, result=result)
                try:
                    sorted_to = await anyio.to_thread.run_sync(copier.copy, data, source.name, result.verdict)
                except (OSError, ServiceError) as exc:
                    error = exc if isinstance(exc, ServiceError) else ServiceError(f"sorted copy failed: {exc}", 500, "copy_failed")
                    self.metrics.errors.labels(reason=error.reason).inc()
                    return BatchItem(file=source.name, ok=False, result=result, error=error.file_error(source.name))
                return BatchItem(file=source.name, ok=True, result=result, sorted_to=sorted_to)

        return list(await asyncio.gather(*(one(source) for source in sources)))

    async def _prepare(self, data: bytes, file: str) -> Prepared:
        if self._prepare_slots is None:
            self._prepare_slots = asyncio.Semaphore(PREPARE_CONCURRENCY)
        async with self._prepare_slots:
            prepared = await anyio.to_thread.run_sync(self._prepare_now, data, file)
        self.metrics.observe_timings(prepared.timings_ms)
        self.metrics.faces_per_image.observe(len(prepared.faces))
        return prepared

    def _prepare_now(self, data: bytes, file: str) -> Prepared:
        started = time.perf_counter()
        try:
            image = decode_image(data, self.max_bytes, self.max_pixels)
        except ImageError as exc:
            raise from_image_error(exc) from exc
        decode_ms = round((time.perf_counter() - started) * 1000.0, 3)
        return self.pipeline.prepare(image, file, {"decode": decode_ms})
