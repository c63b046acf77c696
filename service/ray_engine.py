"""`facecheck classify PATH --engine ray --parquet OUT`: the CLI's classify as a Ray Data job, for a backlog
of photos too big for one machine. It runs the service's own steps (service.engine), each in a stage
that Ray spreads over a cluster:

    the file list (driver: a local folder as the CLI lists it, or any URI pyarrow reads: s3://, gs://, file://)
      -> read, decode, detect, crop, rotate    map_batches tasks on CPU workers        engine.prepare
      -> the classifier                         an actor pool, one ONNX session each: a GPU each where
                                                the cluster has GPUs, else one CPU (shared on a local Ray)
      -> calibrate, label, aggregate;           map_batches tasks on CPU workers        engine.assemble,
         sorted copy and annotated picture                                                engine.write_outputs
      -> Parquet files under OUT, written as blocks finish: one row per file, its faces nested, errors as rows

Every input file gives exactly one row: a file that cannot be read or decoded is an error row, as in the
CLI, and a worker that dies has its task retried by Ray (an actor is restarted), so nothing is lost.
A re-run into the same OUT reads the rows already there and classifies only the files without one; a
Parquet file left unreadable by a killed run is removed and its files done again. The CSV, JSON and
summary are then those of every listed file, as the in-process CLI writes them.

Nothing here is imported by the service: `ray` is an optional dependency (`pip install -e '.[ray]'`).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs
from pydantic import BaseModel, ConfigDict

from service.annotate import AnnotationWriter
from service.calibration import UncertainBand
from service.engine import assemble, decode, error_item, prepare, write_outputs
from service.errors import ServiceError
from service.faces import DetectorSettings, Face, FaceDetector
from service.folders import FolderFile, SortedCopier, read_regular_file
from service.imaging import FORMATS
from service.orientation import OrientationModel
from service.pipeline import Pipeline, Prepared
from service.schemas import BatchItem, FileError

log = logging.getLogger("facecheck.ray")
# Files per prepare task: their detection (~20 ms each) outweighs a task's scheduling, and a worker
# killed mid-task costs only these to redo.
PREPARE_BATCH = 8
# Files per classifier call: their crops go to ONNX Runtime in one batch (3 rotations per face).
CLASSIFY_BATCH = 32
FINISH_BATCH = 32
# Rows per Parquet file: fewer, bigger files; a run killed before a file is closed redoes at most these.
ROWS_PER_FILE = 1000
# Local Ray's object store: crops in flight are a few MB; Ray's default (30% of memory) is far more than needed.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2

FACE = pa.struct([("box", pa.list_(pa.float64())), ("detection_score", pa.float64()), ("fake_probability", pa.float64()),
                  ("label", pa.string()), ("classified", pa.bool_())])
# One row per file. `item` is the file's BatchItem as JSON, the answer the CLI and the batch endpoints give;
# the other columns repeat its fields for queries; `setup` names the model and settings that made the row.
ROW_SCHEMA = pa.schema([("file", pa.string()), ("ok", pa.bool_()), ("verdict", pa.string()), ("fake_probability", pa.float64()),
                        ("face_found", pa.bool_()), ("faces", pa.list_(FACE)), ("sorted_to", pa.string()), ("status", pa.int32()),
                        ("reason", pa.string()), ("error", pa.string()), ("setup", pa.string()), ("item", pa.string())])


class JobConfig(BaseModel):
    """What every stage needs, sent with the job: workers read no FACECHECK_* variables of their own."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: str  # a path every worker can read (in the cluster's image, or on a shared filesystem)
    angles: tuple[float, ...]
    band: UncertainBand | None
    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...] = FORMATS
    max_faces: int
    detector: DetectorSettings
    orientation_model: str | None = None  # the orientation network, where photos on their side are turned upright; as `model`
    filesystem: str | None = None  # the URI the file list came from; None: local paths
    sort: str | None = None
    annotate: str | None = None

    def setup(self, model_name: str, model_version: str) -> str:
        band = f"[{self.band.low:g}, {self.band.high:g})" if self.band else "none"
        return f"{model_name} {model_version}; tta {','.join(f'{a:g}' for a in self.angles) or 'none'}; band {band}"


@dataclass(frozen=True)
class Input:
    """One listed file: its name in the answer, where a worker reads it, and the refusal of a file that must not be read."""

    name: str
    source: str
    refusal: FileError | None = None


class RayOptions(BaseModel):
    address: str | None = None  # None: start a local Ray with `cpus` CPUs
    cpus: int | None = None
    workers: int | None = None  # prepare tasks at once; None: as many as the CPUs allow
    classifiers: int | None = None  # classifier actors; None: one per GPU, or one per 2 CPUs without GPUs
    device: Literal["auto", "cpu", "cuda"] = "auto"  # the classifier's: auto (GPUs where the cluster has them), cpu, cuda


# --- the file list (driver) ---

def is_uri(path: str) -> bool:
    return "://" in path


def from_folder(files: Sequence[FolderFile]) -> list[Input]:
    """The CLI's own listing (service.folders: special files and links out of the folder listed as errors)."""
    return [Input(f.name, str(f.path), f.error.file_error(f.name) if f.error else None) for f in files]


def list_uri(uri: str, recursive: bool) -> list[Input]:
    """Every file under a URI that pyarrow's filesystems read (s3://, gs://, hdfs://, file://), named
    relative to it and sorted; the URI of one file is that file. Raises ValueError where it names nothing."""
    filesystem, base = fs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(base)
    if info.type == fs.FileType.File:
        return [Input(info.base_name, info.path)]
    if info.type != fs.FileType.Directory:
        raise ValueError(f"no such file or folder: {uri}")
    found = filesystem.get_file_info(fs.FileSelector(base, recursive=recursive))
    prefix = base.rstrip("/") + "/"
    return sorted((Input(i.path.removeprefix(prefix), i.path) for i in found if i.type == fs.FileType.File), key=lambda i: i.name)


# --- the stages (workers) ---

def _pipeline(config: JobConfig) -> Pipeline:
    return _pipeline_of(config.model_dump_json())


@lru_cache(maxsize=4)
def _pipeline_of(config_json: str) -> Pipeline:
    """One per worker process and job: MTCNN's sessions load once, not per task."""
    from service.onnx_model import read_card

    config = JobConfig.model_validate_json(config_json)
    orientation = OrientationModel(config.orientation_model) if config.orientation_model else None
    return Pipeline(read_card(config.model), FaceDetector(config.detector, device="cpu"), config.angles, config.max_faces, config.band,
                    orientation=orientation)


@lru_cache(maxsize=4)
def _filesystem(uri: str) -> fs.FileSystem:
    return fs.FileSystem.from_uri(uri)[0]


def read_input(config: JobConfig, source: str) -> bytes:
    """At most max_bytes + 1 bytes, as the CLI reads a file; one that cannot be read is a 403 ServiceError."""
    if config.filesystem is None:
        return read_regular_file(Path(source), config.max_bytes)
    try:
        with _filesystem(config.filesystem).open_input_stream(source) as stream:
            return stream.read(config.max_bytes + 1)
    except OSError as exc:
        raise ServiceError(f"file cannot be read: {exc}", 403, "file_unreadable") from None


def prepare_batch(batch: pa.Table, config: JobConfig) -> pa.Table:
    """engine.prepare for each file: its crops (raw uint8 bytes) and the rest of its Prepared, or its error."""
    pipeline = _pipeline(config)
    out = {"file": [], "source": [], "crops": [], "n_crops": [], "prepared": [], "error": []}
    for row in batch.to_pylist():
        crops, prepared, error = b"", "", ""
        try:
            if row["refusal"]:
                raise_refusal(row["refusal"])
            _, found = prepare(pipeline, read_input(config, row["source"]), row["file"], config.max_bytes, config.max_pixels, config.formats)
            crops, prepared = found.crops.tobytes(), encode_prepared(found)
            n_crops = len(found.crops)
        except ServiceError as exc:
            error, n_crops = exc.file_error(row["file"]).model_dump_json(), 0
        except Exception as exc:  # noqa: BLE001 - one file's bug is that file's row, never the job's end
            error, n_crops = internal_error(row["file"], exc).model_dump_json(), 0
        for key, value in (("file", row["file"]), ("source", row["source"]), ("crops", crops), ("n_crops", n_crops),
                           ("prepared", prepared), ("error", error)):
            out[key].append(value)
    return pa.table(out, schema=pa.schema([("file", pa.string()), ("source", pa.string()), ("crops", pa.binary()),
                                           ("n_crops", pa.int32()), ("prepared", pa.string()), ("error", pa.string())]))


class Classifier:
    """An actor of the pool: one ONNX session, the crops of a batch of files in one call."""

    def __init__(self, config: JobConfig, device: str) -> None:
        from service.onnx_model import OnnxClassifier

        self.model = OnnxClassifier(config.model, device, threads=1 if device == "cpu" else 0)
        self.side = self.model.card.preprocess.input_size
        self.model.warm_up()

    def __call__(self, batch: pa.Table) -> pa.Table:
        counts = batch["n_crops"].to_pylist()
        chunks = [np.frombuffer(c, dtype=np.uint8) for c in batch["crops"].to_pylist() if c]
        crops = np.concatenate(chunks).reshape(-1, self.side, self.side, 3) if chunks else np.zeros((0, self.side, self.side, 3), np.uint8)
        started = time.perf_counter()
        probs = self.model.predict_crops(crops) if len(crops) else np.zeros(0, np.float32)
        ms = round((time.perf_counter() - started) * 1000.0, 3)
        per_file = np.split(probs.astype(np.float32), np.cumsum(counts)[:-1]) if counts else []
        return (batch.drop_columns(["crops"])
                .append_column("probs", pa.array([p.tolist() for p in per_file], type=pa.list_(pa.float32())))
                .append_column("classify_ms", pa.array([ms if n else 0.0 for n in counts], type=pa.float64())))


def finish_batch(batch: pa.Table, config: JobConfig) -> pa.Table:
    """engine.assemble for each classified file (and its sorted copy and annotated picture), then its row."""
    pipeline = _pipeline(config)
    copier = SortedCopier(Path(config.sort)) if config.sort else None
    annotator = AnnotationWriter(Path(config.annotate)) if config.annotate else None
    setup = config.setup(pipeline.card.name, pipeline.card.version)
    rows = []
    for row in batch.to_pylist():
        try:
            item = finished_item(row, pipeline, config, copier, annotator)
        except Exception as exc:  # noqa: BLE001 - as in prepare_batch
            item = BatchItem(file=row["file"], ok=False, error=internal_error(row["file"], exc))
        rows.append(to_row(item, setup))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def finished_item(row: dict, pipeline: Pipeline, config: JobConfig, copier: SortedCopier | None,
                  annotator: AnnotationWriter | None) -> BatchItem:
    if row["error"]:
        return BatchItem(file=row["file"], ok=False, error=FileError.model_validate_json(row["error"]))
    # the crops stayed behind; their count alone is needed, to check the probabilities against
    prepared = decode_prepared(row["file"], row["prepared"], np.empty((row["n_crops"], 0), np.uint8))
    result = assemble(pipeline, prepared, np.asarray(row["probs"], np.float32), row["classify_ms"])
    item = BatchItem(file=row["file"], ok=True, result=result)
    if copier is not None or annotator is not None:
        try:  # the file again, as the crops alone travelled: read, and decoded only for the picture
            data = read_input(config, row["source"])
            image = decode(data, config.max_bytes, config.max_pixels, config.formats) if annotator is not None else None
        except ServiceError as exc:
            return error_item(row["file"], exc).model_copy(update={"result": result})
        write_outputs(item, data, image, copier, annotator)
    return item


def raise_refusal(refusal: str) -> None:
    error = FileError.model_validate_json(refusal)
    raise ServiceError(error.error, error.status, error.reason)


def internal_error(file: str, exc: Exception) -> FileError:
    log.exception("%s: unexpected error", file)
    return FileError(file=file, status=500, error=f"internal error: {exc.__class__.__name__}: {exc}", reason="internal_error")


def encode_prepared(prepared: Prepared) -> str:
    """A Prepared without its crops, which travel as bytes beside it."""
    return json.dumps({"faces": [[list(face.box), face.score] for face in prepared.faces], "classified": prepared.classified,
                       "timings_ms": prepared.timings_ms, "turned": prepared.turned})


def decode_prepared(file: str, text: str, crops: np.ndarray) -> Prepared:
    data = json.loads(text)
    faces = [Face(tuple(box), score) for box, score in data["faces"]]
    return Prepared(file, faces, data["classified"], crops, data["timings_ms"], data["turned"])


def to_row(item: BatchItem, setup: str) -> dict:
    result, error = item.result, item.error
    faces = [face.model_dump(include={"box", "detection_score", "fake_probability", "label", "classified"}) for face in result.faces] if result else []
    return {"file": item.file, "ok": item.ok, "verdict": result.verdict if result else None,
            "fake_probability": result.fake_probability if result else None, "face_found": result.face_found if result else None,
            "faces": faces, "sorted_to": item.sorted_to, "status": error.status if error else None, "reason": error.reason if error else None,
            "error": error.error if error else None, "setup": setup, "item": item.model_dump_json()}


# --- the job (driver) ---

@dataclass
class Outcome:
    items: list[BatchItem]  # one per listed file, in the listing's order
    resumed: int  # files whose rows an earlier run had written
    classified: int  # files this run did
    dropped_parts: list[str]  # unreadable Parquet files removed


def run_job(inputs: Sequence[Input], out: str, config: JobConfig, options: RayOptions, setup: str) -> Outcome:
    """Classifies the inputs without a row under `out`, writing theirs there; then every input's item."""
    out_fs, out_path = output_filesystem(out)
    done, dropped = read_rows(out_fs, out_path, setup, items=False)
    todo = [i for i in inputs if i.name not in done]
    if todo:
        dataset(todo, config, options).write_parquet(out_path, filesystem=out_fs, min_rows_per_file=min(ROWS_PER_FILE, len(todo)))
    rows, more_dropped = read_rows(out_fs, out_path, setup, items=True)
    missing = [i.name for i in inputs if i.name not in rows]
    if missing:
        raise RuntimeError(f"{len(missing)} files have no row under {out} after the run, e.g. {missing[:3]}")
    items = [BatchItem.model_validate_json(rows[i.name]) for i in inputs]
    return Outcome(items, len(inputs) - len(todo), len(todo), dropped + more_dropped)


def dataset(inputs: Sequence[Input], config: JobConfig, options: RayOptions):
    import ray
    import ray.data

    start_ray(options)
    gpus = 0 if options.device == "cpu" else int(ray.cluster_resources().get("GPU", 0))
    if options.device == "cuda" and not gpus:
        raise ValueError("--device cuda, but the Ray cluster has no GPU")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # On CPUs a photo's classification costs about 0.7x its reading and detection (docs/benchmarks.md): an
    # actor, one ONNX Runtime thread, keeps up with about two CPUs of prepare tasks.
    classifiers = options.classifiers or gpus or max(1, cpus // 2)
    # Where the cluster has GPUs, each actor takes one. Without, on a cluster it takes the CPU it keeps busy,
    # which also keeps it off a head node started with no CPUs; on the local Ray it shares the cores with the
    # prepare tasks, as ONNX Runtime shares them with detection in the in-process CLI.
    classifier_resources = {"num_gpus": 1} if gpus else {"num_cpus": 0 if options.address is None else 1}
    # Ray Data holds back part of the CPUs for each operator by default; here every stage but prepare is light,
    # and with that reservation a 2-CPU node ran one prepare task at a time (docs/benchmarks.md).
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    rows = [{"file": i.name, "source": i.source, "refusal": i.refusal.model_dump_json() if i.refusal else ""} for i in inputs]
    blocks = max(1, min(len(rows) // PREPARE_BATCH, 10_000))
    return (ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(prepare_batch, fn_kwargs={"config": config}, batch_format="pyarrow", batch_size=PREPARE_BATCH,
                         num_cpus=1, compute=ray.data.TaskPoolStrategy(size=options.workers))
            .map_batches(Classifier, fn_constructor_kwargs={"config": config, "device": "cuda" if gpus else "cpu"},
                         batch_format="pyarrow", batch_size=CLASSIFY_BATCH, compute=ray.data.ActorPoolStrategy(size=classifiers),
                         **classifier_resources)
            .map_batches(finish_batch, fn_kwargs={"config": config}, batch_format="pyarrow", batch_size=FINISH_BATCH, num_cpus=0.25))


def start_ray(options: RayOptions) -> None:
    """Joins the cluster at `address` (auto: the one this machine belongs to; ray://host:10001: Ray Client),
    or starts a local Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=options.cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 logging_level=logging.WARNING)


def output_filesystem(out: str) -> tuple[fs.FileSystem, str]:
    if is_uri(out):
        return fs.FileSystem.from_uri(out)
    path = Path(out).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return fs.LocalFileSystem(), str(path)


def read_rows(filesystem: fs.FileSystem, path: str, setup: str, items: bool) -> tuple[dict[str, str | None], list[str]]:
    """The files with a row in the Parquet files under `path`, each with its item's JSON where `items`
    (else None; the first row where a file has two), and the Parquet files that could not be read (a run
    killed while writing them), which are removed.

    Raises ValueError where the rows were made with another model or other settings: mixed, the answers
    would not be comparable."""
    rows: dict[str, str | None] = {}
    dropped: list[str] = []
    infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    for info in sorted((i for i in infos if i.type == fs.FileType.File and i.base_name.endswith(".parquet")), key=lambda i: i.path):
        try:
            table = pq.read_table(info.path, filesystem=filesystem, columns=["file", "setup", "item"] if items else ["file", "setup"])
        except (pa.ArrowException, OSError) as exc:
            log.warning("%s cannot be read (%s); removed, its files are done again", info.path, exc)
            filesystem.delete_file(info.path)
            dropped.append(info.path)
            continue
        others = set(table["setup"].to_pylist()) - {setup}
        if others:
            raise ValueError(f"{path} holds rows made with {sorted(others)[0]!r}, not {setup!r}; write to another folder")
        jsons = table["item"].to_pylist() if items else [None] * len(table)
        for file, item in zip(table["file"].to_pylist(), jsons):
            rows.setdefault(file, item)
    return rows, dropped


def print_outcome(outcome: Outcome, out: str, stream=sys.stdout) -> None:
    dropped = f"; {len(outcome.dropped_parts)} unreadable Parquet files of a killed run removed and redone" if outcome.dropped_parts else ""
    files = f"{outcome.classified} file{'s' if outcome.classified != 1 else ''}"
    print(f"ray: {files} classified now, {outcome.resumed} already done under {out}{dropped}", file=stream)
