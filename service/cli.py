"""Classify the photos of a folder on this machine, without a server.

    python -m service.cli classify PATH [--recursive] [--csv out.csv] [--json out.json]
                                        [--sort OUTDIR] [--annotate OUTDIR] [--model M] [--tta -15,0,15] [--device auto|cpu|cuda]
                                        [--engine local|ray --parquet OUT [--address auto|ray://HOST:10001] [--cpus N] ...]

(`facecheck classify PATH` once the package is installed.) It runs the service's own code in this
process: the same folder listing (service.folders), face detector, Pipeline and ONNX model, through the
same Engine that the batch endpoints use, so a folder gets the answers /classify_folder would give.
The JSON file is the batch endpoints' BatchResult and the CSV has the columns of their `csv` option.
Files that cannot be read or decoded are reported one by one; they never stop the run.

Settings not given as options (byte and pixel limits, faces per image, detection size, the uncertain
band) are the service's FACECHECK_* environment variables. Exit status: 0 when every file was classified,
1 when some could not be (see the errors listed), 2 when the command itself cannot run (bad PATH, options,
model). A photo whose probability lies in the model's uncertain band is answered "uncertain", counted
apart and, with --sort, copied into OUTDIR/uncertain/.

--engine ray runs the same steps as a Ray Data job (service.ray_engine): on a local Ray started for the
run, or on the cluster at --address. PATH may then also be a URI that pyarrow reads (s3://, gs://,
file://). Each file's row goes to Parquet under --parquet OUT as the job runs; a re-run into the same OUT
classifies only the files without a row there. The model path, --sort and --annotate must be reachable
from every worker (the cluster's image, or a shared filesystem).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from functools import partial
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from service.annotate import AnnotationWriter
from service.argv import join_option_values
from service.batch import batch_result, to_csv
from service.config import get_settings, parse_angles, settings_error
from service.contract import ModelLoadError
from service.engine import Engine, Source, local_classifier
from service.errors import ServiceError
from service.folders import FolderFile, SortedCopier, list_files, resolve_folder
from service.metrics import get_metrics
from service.schemas import BatchItem, BatchResult

PROG = "facecheck"


class CommandError(Exception):
    """The command cannot run at all (exit status 2)."""


def angles(text: str) -> tuple[float, ...]:
    try:
        return parse_angles(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"angles must be comma-separated degrees such as -15,0,15 (or \"\" for none), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog=PROG, description="Tells whether the faces in photos are real or fake, on this machine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("classify", help="classify every photo under a folder (or one photo)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", help="a folder of photos, or one photo; with --engine ray also a URI (s3://, gs://, file://)")
    p.add_argument("-r", "--recursive", action="store_true", help="include subfolders (the --sort and --annotate folders are skipped)")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write one row per file as CSV (the batch endpoints' csv columns)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON (the batch endpoints' BatchResult)")
    p.add_argument("--sort", type=Path, metavar="OUTDIR", help="copy each classified photo into OUTDIR/real/, OUTDIR/fake/ or OUTDIR/uncertain/ (never overwriting)")
    p.add_argument("--annotate", type=Path, metavar="OUTDIR",
                   help="write each photo with its faces boxed and labelled to OUTDIR/<its name>.png, e.g. sub/a.jpg -> OUTDIR/sub/a.jpg.png")
    p.add_argument("--model", type=Path, default=settings.model, metavar="M", help=f"exported .onnx model (default: FACECHECK_MODEL, {settings.model})")
    p.add_argument("--tta", type=angles, default=settings.tta_angles, metavar="ANGLES",
                   help="test-time rotations in degrees, e.g. -15,0,15; \"\" for none (default: FACECHECK_TTA_ANGLES, else the model "
                        "card's, those its threshold and calibration were fitted at)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=settings.device, help=f"where ONNX Runtime and MTCNN run (default: FACECHECK_DEVICE, {settings.device})")
    p.add_argument("-q", "--quiet", action="store_true", help="print the summary only, not a line per file")
    ray = p.add_argument_group("the Ray engine (pip install -e '.[ray]')")
    ray.add_argument("--engine", choices=["local", "ray"], default="local", help="local: this process (default); ray: a Ray Data job")
    ray.add_argument("--parquet", metavar="OUT", help="folder or URI for the job's Parquet rows (required with --engine ray); "
                     "a re-run into it skips the files done")
    ray.add_argument("--address", metavar="ADDRESS", help="the Ray cluster: auto (the one this machine is part of) or ray://HOST:10001; "
                     "default: start a local Ray")
    ray.add_argument("--cpus", type=positive, metavar="N", help="CPUs of the local Ray (default: all of this machine's)")
    ray.add_argument("--workers", type=positive, metavar="N", help="files read, decoded and searched for faces at once (default: one per CPU)")
    ray.add_argument("--classifiers", type=positive, metavar="N", help="classifier actors (default: one per GPU, or one per 2 CPUs)")
    return parser


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        get_settings()  # the parser's defaults come from the settings
    except ValidationError as exc:
        print(f"{PROG}: error: {settings_error(exc)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(join_option_values(sys.argv[1:] if argv is None else argv, ("--tta",)))
    try:
        return classify_command(args)
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def classify_command(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        items = ray_items(args)
    else:
        if ray_only := [f"--{name}" for name in ("parquet", "address", "cpus", "workers", "classifiers") if getattr(args, name) is not None]:
            raise CommandError(f"{', '.join(ray_only)} need --engine ray")
        items = local_items(args)
    answer = batch_result(items)
    if args.json:
        write_text(args.json, answer.model_dump_json(indent=2) + "\n")
    if args.csv:
        write_text(args.csv, to_csv(items))
    report(answer, args, sys.stdout)
    return 1 if answer.summary.errors else 0


def local_items(args: argparse.Namespace) -> list[BatchItem]:
    if "://" in args.path:
        raise CommandError(f"{args.path}: a URI needs --engine ray")
    files = find_files(Path(args.path), args.recursive, exclude=outputs(args))
    engine = load_engine(args.model, args.tta, args.device)
    copier = SortedCopier(args.sort) if args.sort else None
    annotator = AnnotationWriter(args.annotate) if args.annotate else None
    return run(engine, files, copier, annotator)


def ray_items(args: argparse.Namespace) -> list[BatchItem]:
    """The same items from a Ray Data job (service.ray_engine), whose rows go to Parquet under --parquet."""
    try:
        from service import ray_engine
        from service.faces import configured_detector
        from service.onnx_model import read_card
    except ImportError as exc:
        raise CommandError(f"--engine ray needs Ray ({exc}): pip install -e '.[ray]'") from None
    if not args.parquet:
        raise CommandError("--engine ray needs --parquet OUT, the folder or URI its rows are written to")
    if ray_engine.is_uri(args.path):
        try:
            inputs = ray_engine.list_uri(args.path, args.recursive)
        except (OSError, ValueError, ImportError) as exc:
            raise CommandError(f"{args.path}: {exc}") from None
    else:
        inputs = ray_engine.from_folder(find_files(Path(args.path), args.recursive, exclude=outputs(args)))
    settings = get_settings()
    try:
        card = read_card(args.model)
    except ModelLoadError as exc:
        raise CommandError(str(exc)) from None
    angles = settings.angles_for(card) if args.tta is None else args.tta
    config = ray_engine.JobConfig(model=str(Path(args.model).resolve()), angles=angles, band=settings.band_for(card),
                                  max_bytes=settings.max_bytes, max_pixels=settings.max_pixels, formats=settings.formats,
                                  max_faces=settings.max_faces, orientation_model=str(settings.orientation_path) if settings.orientation_path else None,
                                  detector=configured_detector(), filesystem=args.path if ray_engine.is_uri(args.path) else None,
                                  sort=str(args.sort.resolve()) if args.sort else None,
                                  annotate=str(args.annotate.resolve()) if args.annotate else None)
    options = ray_engine.RayOptions(address=args.address, cpus=args.cpus, workers=args.workers, classifiers=args.classifiers,
                                         device=args.device)
    try:
        outcome = ray_engine.run_job(inputs, args.parquet, config, options, config.setup(card.name, card.version))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    ray_engine.print_outcome(outcome, args.parquet)
    return outcome.items


def outputs(args: argparse.Namespace) -> list[Path]:
    """The folders this run writes to, which a recursive listing skips."""
    return [Path(p) for p in (args.sort, args.annotate, args.parquet) if p is not None and "://" not in str(p)]


def find_files(path: Path, recursive: bool, exclude: Sequence[Path] = ()) -> list[FolderFile]:
    """The photos to classify: every file of a folder (named relative to it, sorted), or the one file."""
    if not path.exists():
        raise CommandError(f"no such file or folder: {path}")
    if path.is_file():
        return [FolderFile(path.name, path.resolve())]
    try:
        folder = resolve_folder(path, "")
        return list_files(path, folder, recursive, limit=sys.maxsize, exclude=exclude)
    except ServiceError as exc:
        raise CommandError(f"{path}: {exc.message}") from None


def load_engine(model: Path, tta: Sequence[float] | None, device: str, classifier_threads: int = 0, turn_sideways: bool | None = None) -> Engine:
    """The service's Engine with the face detector and the ONNX model loaded in this process; `tta` None: the
    rotations in force for the model (FACECHECK_TTA_ANGLES, else its card's); `classifier_threads` 0: one per core;
    `turn_sideways` None: FACECHECK_TURN_SIDEWAYS."""
    from service.faces import FaceDetector, configured_detector, detector_device
    from service.onnx_model import OnnxClassifier
    from service.orientation import configured_orientation
    from service.pipeline import Pipeline

    settings = get_settings()
    try:
        classifier = OnnxClassifier(model, device, classifier_threads)
        detector = FaceDetector(configured_detector(), device=detector_device(device))
        orientation = configured_orientation(turn_sideways)
    except (ModelLoadError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    angles = settings.angles_for(classifier.card) if tta is None else tta
    pipeline = Pipeline(classifier.card, detector, angles, settings.max_faces, settings.band_for(classifier.card), orientation=orientation)
    metrics = get_metrics()
    return Engine(pipeline, local_classifier(classifier, metrics), settings.max_bytes, settings.max_pixels, metrics, settings.formats)


def run(engine: Engine, files: Sequence[FolderFile], copier: SortedCopier | None, annotator: AnnotationWriter | None) -> list[BatchItem]:
    from tqdm import tqdm

    max_bytes = engine.max_bytes
    sources = [Source(file.name, partial(file.read, max_bytes)) for file in files]
    with tqdm(total=len(sources), unit="photo", desc="classifying", file=sys.stderr, dynamic_ncols=True) as bar:
        counts = {"real": 0, "fake": 0, "uncertain": 0, "errors": 0}

        def done(item: BatchItem) -> None:
            counts["errors" if not item.ok else item.result.verdict] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)

        return asyncio.run(engine.classify_sources(sources, copier, annotator, on_item=done))


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None


def report(answer: BatchResult, args: argparse.Namespace, out) -> None:
    if not args.quiet:
        for item in answer.results:
            if item.ok and item.result is not None:
                result = item.result
                faces = f"{len(result.faces)} face{'s' if len(result.faces) != 1 else ''}" if result.face_found else "no face: whole image"
                faces += f", turned {result.turned}" if result.turned else ""
                print(f"{result.verdict:<9} {result.fake_probability:.3f}  {faces:<21} {item.file}", file=out)
            elif item.result is not None:  # classified, but its sorted copy or annotated picture failed
                print(f"{item.result.verdict:<9} {item.result.fake_probability:.3f}  {'(output failed)':<21} {item.file}", file=out)
            else:
                print(f"{'error':<9} {item.error.status:<5}  {item.error.reason:<21} {item.file}", file=out)
    s = answer.summary
    no_face = f" ({s.no_face} with no face found: the whole image was classified)" if s.no_face else ""
    print(f"{s.files} file{'s' if s.files != 1 else ''}: {s.real} real, {s.fake} fake, {s.uncertain} uncertain{no_face}, "
          f"{s.errors} error{'s' if s.errors != 1 else ''}", file=out)
    if s.uncertain:
        print(f"  uncertain: the fake probability lies in the model's uncertain band {band_text(answer)}, where it is not sure; "
              "have a person look", file=out)
    for item in answer.results:
        if item.error is not None:
            print(f"  error: {item.file}: {item.error.error} ({item.error.status} {item.error.reason})", file=out)
    written = [f"{label} {path}" for label, path in (("CSV", args.csv), ("JSON", args.json)) if path]
    if args.sort:
        written.append(f"sorted copies under {args.sort}/real, {args.sort}/fake and {args.sort}/uncertain")
    if args.annotate:
        written.append(f"annotated pictures under {args.annotate}")
    if written:
        print("wrote " + "; ".join(written), file=out)


def band_text(answer: BatchResult) -> str:
    band = next(item.result.model.uncertain_band for item in answer.results if item.result is not None)
    return f"[{band[0]:.3f}, {band[1]:.3f})" if band else ""


if __name__ == "__main__":
    sys.exit(main())
