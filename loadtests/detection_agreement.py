"""Do the service's faces match facenet-pytorch's? Both detectors over the images of ../shared/data.

    .venv/bin/python -m loadtests.detection_agreement                  # every image, about 10 minutes
    .venv/bin/python -m loadtests.detection_agreement --every 10       # every 10th image
    .venv/bin/python -m loadtests.detection_agreement --min-face-fraction 0.1

The reference is facenet-pytorch's MTCNN with its defaults (torch); the candidate is the service's
detector (service.faces, backend "onnx") with the service's settings, FACECHECK_* included. Both see the
same bounded copy of each image. A reference face counts as matched when a candidate face overlaps it
with IoU >= 0.9 (each candidate face matches at most one). Prints a table per set and writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from loadtests.images import DATA
from service.faces import Face, FaceDetector, configured_detector

IOU_MATCH = 0.9


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matches(reference: list[Face], candidate: list[Face]) -> int:
    """Reference faces with a distinct candidate face at IoU >= 0.9, greedily by overlap."""
    pairs = sorted(((iou(r.box, c.box), i, j) for i, r in enumerate(reference) for j, c in enumerate(candidate)), reverse=True)
    used_r, used_c = set(), set()
    for overlap, i, j in pairs:
        if overlap >= IOU_MATCH and i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
    return len(used_r)


def compare(files: list[Path], reference: FaceDetector, candidate: FaceDetector) -> dict:
    counts = dict(images=0, reference_faces=0, candidate_faces=0, matched=0, images_identical=0, reference_s=0.0, candidate_s=0.0)
    for path in tqdm(files, unit="img", leave=False):
        image = Image.open(path).convert("RGB")
        started = time.perf_counter()
        expected = reference.detect(image)
        middle = time.perf_counter()
        found = candidate.detect(image)
        counts["reference_s"] += middle - started
        counts["candidate_s"] += time.perf_counter() - middle
        matched = matches(expected, found)
        counts["images"] += 1
        counts["reference_faces"] += len(expected)
        counts["candidate_faces"] += len(found)
        counts["matched"] += matched
        counts["images_identical"] += int(matched == len(expected) == len(found))
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.detection_agreement", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder of sets with real/ and fake/ (default ../shared/data)")
    p.add_argument("--every", type=int, default=1, help="use every Nth image of each set")
    p.add_argument("--min-face-fraction", type=float, help="the candidate's FACECHECK_MIN_FACE_FRACTION (default: the service's)")
    p.add_argument("--out", type=Path, default=Path("loadtests/reports/detection_agreement.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    candidate_settings = configured_detector()
    if args.min_face_fraction is not None:
        candidate_settings = dataclasses.replace(candidate_settings, min_face_fraction=args.min_face_fraction)
    reference = FaceDetector(dataclasses.replace(candidate_settings, min_face_fraction=0.0, backend="facenet"))
    candidate = FaceDetector(candidate_settings)
    sets = sorted(p for p in args.data.iterdir() if p.is_dir()) if args.data.is_dir() else []
    if not sets:
        raise SystemExit(f"no image sets under {args.data}")
    rows = {}
    for folder in sets:
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})[:: args.every]
        rows[folder.name] = compare(files, reference, candidate)
    total = {key: sum(row[key] for row in rows.values()) for key in next(iter(rows.values()))}
    rows["all"] = total
    report = {"candidate": dataclasses.asdict(candidate_settings), "iou_match": IOU_MATCH, "every": args.every, "sets": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"candidate: {candidate_settings}; reference: facenet-pytorch MTCNN defaults; match = IoU >= {IOU_MATCH}")
    print(f"{'set':10} {'images':>7} {'faces':>6} {'matched':>8} {'agree':>7} {'extra':>6} {'same':>6} {'speed-up':>9}")
    for name, row in rows.items():
        agree = row["matched"] / row["reference_faces"] if row["reference_faces"] else float("nan")
        extra = row["candidate_faces"] - row["matched"]
        speed = row["reference_s"] / row["candidate_s"] if row["candidate_s"] else float("nan")
        print(f"{name:10} {row['images']:>7} {row['reference_faces']:>6} {row['matched']:>8} {agree:>7.2%} {extra:>6} "
              f"{row['images_identical'] / row['images']:>6.1%} {speed:>8.2f}x")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
