"""The service's work for one image or many, independent of BentoML.

An image is decoded, its faces found and cropped (in a worker thread: that is CPU or GPU work), then its
crops are awaited from `classify`: ONNX Runtime in this process (`local_classifier`: the CLI, and the
service's API workers on CPU), or the service's Classifier dependency, whose adaptive batching groups
the crops of concurrent images into one ONNX Runtime call (on a GPU). Client errors come out as ServiceError; per-file errors of a batch become items of the
answer.

The steps themselves are plain functions (`prepare`, `assemble`, `write_outputs`), so that the Ray job
(service.ray_engine), which runs them in separate stages on a cluster's workers, runs this very code.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import anyio.to_thread
import numpy as np
from PIL import Image

from service.admission import Admission
from service.annotate import AnnotationWriter, annotated_png
from service.errors import ServiceError, classifier_disconnected, from_classifier_error, from_image_error
from service.folders import SortedCopier
from service.imaging import FORMATS, ImageError, decode_image, require_content
from service.metrics import Metrics
from service.onnx_model import OnnxClassifier
from service.pipeline import Pipeline, Prepared, ms_since
from service.schemas import BatchItem, ImageResult

log = logging.getLogger("bentoml.facecheck")
Classify = Callable[[np.ndarray], Awaitable[np.ndarray]]
OnItem = Callable[[BatchItem], None]
# Images decoded and searched for faces at once in one worker: bounds memory (a decoded image can
# reach FACECHECK_MAX_PIXELS * 3 bytes) and keeps MTCNN from oversubscribing the CPU.
PREPARE_CONCURRENCY = min(4, os.cpu_count() or 1)
# Files of one batch request in flight at once: enough to keep the classifier's batches full.
BATCH_CONCURRENCY = 8
# Tries of one classifier call whose connection breaks (its worker died): a call in flight on the dead
# worker fails, and may meet one more of its stale pooled connections, before it reaches the new worker.
CLASSIFY_ATTEMPTS = 3


def local_classifier(model: OnnxClassifier, metrics: Metrics, admission: Admission | None = None) -> Classify:
    """`model` run on a photo's crops in a worker thread of this process, holding one of `admission`'s
    slots where given (it sheds load with a 503 once a call has waited its whole budget)."""
    slot = admission.slot if admission is not None else contextlib.nullcontext

    async def classify(crops: np.ndarray) -> np.ndarray:
        metrics.batch_size.observe(len(crops))
        async with slot():
            return await anyio.to_thread.run_sync(model.predict_crops, crops)

    return classify


@dataclass(frozen=True)
class Source:
    """One input file: its name in the answer, and how to read its bytes (called in a worker thread).

    `read` returns at most max_bytes + 1 bytes, so that decoding can tell an oversized file, or raises
    a ServiceError for a file that must not be read.
    """

    name: str
    read: Callable[[], bytes]


class Engine:
    def __init__(self, pipeline: Pipeline, classify: Classify, max_bytes: int, max_pixels: int, metrics: Metrics,
                 formats: Sequence[str] = FORMATS) -> None:
        self.pipeline = pipeline
        self.classify = classify
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.formats = tuple(formats)
        self.metrics = metrics
        self._prepare_slots: asyncio.Semaphore | None = None

    async def classify_source(self, source: Source, reject_no_face: bool = False) -> ImageResult:
        data = await anyio.to_thread.run_sync(source.read)
        return await self.classify_bytes(data, source.name, reject_no_face)

    async def classify_bytes(self, data: bytes, file: str, reject_no_face: bool = False) -> ImageResult:
        _, result = await self._classify(data, file, reject_no_face, keep_image=False)
        return result

    async def annotate_source(self, source: Source, reject_no_face: bool = False) -> tuple[bytes, ImageResult]:
        """The photo as a PNG with its result drawn on it (service.annotate), and the result."""
        data = await anyio.to_thread.run_sync(source.read)
        image, result = await self._classify(data, source.name, reject_no_face, keep_image=True)
        return await anyio.to_thread.run_sync(annotated_png, image, result), result

    async def classify_sources(self, sources: Sequence[Source], copier: SortedCopier | None = None,
                               annotator: AnnotationWriter | None = None, on_item: OnItem | None = None) -> list[BatchItem]:
        """One item per source, in order; a file's error is its item's, never the whole answer's.

        `copier` copies each classified file into real/ or fake/, `annotator` writes its annotated
        picture; `on_item` hears of each item as it is done (a progress bar).
        """
        slots = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(source: Source) -> BatchItem:
            async with slots:
                item = await self._batch_item(source, copier, annotator)
            if on_item is not None:
                on_item(item)
            return item

        return list(await asyncio.gather(*(one(source) for source in sources)))

    async def _batch_item(self, source: Source, copier: SortedCopier | None, annotator: AnnotationWriter | None) -> BatchItem:
        try:
            data = await anyio.to_thread.run_sync(source.read)
            image, result = await self._classify(data, source.name, keep_image=annotator is not None)
        except ServiceError as exc:
            self.metrics.errors.labels(reason=exc.reason).inc()
            return error_item(source.name, exc)
        item = BatchItem(file=source.name, ok=True, result=result)
        if copier is not None or annotator is not None:
            await anyio.to_thread.run_sync(write_outputs, item, data, image, copier, annotator)
            if item.error is not None:
                self.metrics.errors.labels(reason=item.error.reason).inc()
        return item

    async def _classify(self, data: bytes, file: str, reject_no_face: bool = False, keep_image: bool = False) -> tuple[Image.Image | None, ImageResult]:
        """The decoded image (when `keep_image`, else None: it need not wait in memory for the classifier) and the result."""
        image, prepared = await self._prepare(data, file, keep_image)
        if reject_no_face and not prepared.faces:
            raise ServiceError("no face found in the image (reject_no_face is set)", 422, "no_face")
        started = time.perf_counter()
        probs = await self._predict(prepared.crops)
        result = assemble(self.pipeline, prepared, probs, ms_since(started))
        self.metrics.stage_seconds.labels(stage="classify").observe(result.timings_ms["classify"] / 1000.0)
        self.metrics.predictions.labels(label=result.verdict).inc()
        if result.turned:
            self.metrics.turned.labels(degrees=str(result.turned)).inc()
        return image, result

    async def _predict(self, crops: np.ndarray) -> np.ndarray:
        """The classifier's answer; refusals come out as ServiceError. A call cut off because the classifier's
        worker died is sent again: the supervisor starts a new worker, and the call waits for it."""
        for attempt in range(1, CLASSIFY_ATTEMPTS + 1):
            try:
                return await self.classify(crops)
            except Exception as exc:
                if classifier_disconnected(exc) and attempt < CLASSIFY_ATTEMPTS:
                    log.warning("classifier call %d of %d failed (%r); sending it again", attempt, CLASSIFY_ATTEMPTS, exc)
                    await asyncio.sleep(0.1)  # lets the event loop drop the dead worker's other pooled connections
                    continue
                mapped = from_classifier_error(exc)
                if mapped is None:
                    raise
                raise mapped from exc
        raise AssertionError("unreachable")

    async def _prepare(self, data: bytes, file: str, keep_image: bool) -> tuple[Image.Image | None, Prepared]:
        if self._prepare_slots is None:
            self._prepare_slots = asyncio.Semaphore(PREPARE_CONCURRENCY)
        async with self._prepare_slots:
            image, prepared = await anyio.to_thread.run_sync(prepare, self.pipeline, data, file, self.max_bytes, self.max_pixels, self.formats)
        self.metrics.observe_timings(prepared.timings_ms)
        self.metrics.faces_per_image.observe(len(prepared.faces))
        return (image if keep_image else None), prepared


def prepare(pipeline: Pipeline, data: bytes, file: str, max_bytes: int, max_pixels: int,
            formats: Sequence[str] = FORMATS) -> tuple[Image.Image, Prepared]:
    """A file's bytes decoded (a bad image is a ServiceError), its faces found, cropped and rotated."""
    started = time.perf_counter()
    image = decode(data, max_bytes, max_pixels, formats)
    decode_ms = ms_since(started)
    return image, pipeline.prepare(image, file, {"decode": decode_ms})


def decode(data: bytes, max_bytes: int, max_pixels: int, formats: Sequence[str] = FORMATS) -> Image.Image:
    try:
        return require_content(decode_image(data, max_bytes, max_pixels, formats))
    except ImageError as exc:
        raise from_image_error(exc) from exc


def assemble(pipeline: Pipeline, prepared: Prepared, probs: np.ndarray, classify_ms: float) -> ImageResult:
    """The result from the classifier's probabilities for `prepared.crops`, in their order."""
    probs = np.asarray(probs, dtype=np.float32).reshape(-1)
    if len(probs) != len(prepared.crops):
        raise RuntimeError(f"the classifier answered {len(probs)} probabilities for {len(prepared.crops)} crops")
    return pipeline.assemble(prepared, probs, classify_ms)


def error_item(file: str, exc: ServiceError) -> BatchItem:
    return BatchItem(file=file, ok=False, error=exc.file_error(file))


def write_outputs(item: BatchItem, data: bytes, image: Image.Image | None, copier: SortedCopier | None,
                  annotator: AnnotationWriter | None) -> None:
    """A classified item's annotated picture and sorted copy, where asked for; a failed one (OSError) makes
    the item an error (500), its result kept."""
    try:
        if annotator is not None:
            _write(annotator.write, "annotated picture", "annotate_failed", image, item.file, item.result)
        if copier is not None:
            item.sorted_to = _write(copier.copy, "sorted copy", "copy_failed", data, item.file, item.result.verdict)
    except ServiceError as error:
        item.ok, item.error = False, error.file_error(item.file)


def _write(write: Callable[..., object], what: str, reason: str, *args: object) -> object:
    try:
        return write(*args)
    except OSError as exc:
        raise ServiceError(f"{what} failed: {exc}", 500, reason) from exc
