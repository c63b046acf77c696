"""A batch answer from its items: counts that add up, and the same rows as CSV.

files == real + fake + uncertain + errors; no_face counts the classified files (of any verdict) in which
no face was found, so it is part of real + fake + uncertain, not beside it.
"""
from __future__ import annotations

import csv
import io
from typing import Sequence

from service.schemas import BatchItem, BatchResult, BatchSummary

CSV_COLUMNS = ("file", "ok", "verdict", "fake_probability", "faces", "face_found", "turned", "sorted_to", "status", "reason", "error")


def batch_result(items: Sequence[BatchItem], with_csv: bool = False) -> BatchResult:
    return BatchResult(summary=summarise(items), results=list(items), csv=to_csv(items) if with_csv else None)


def summarise(items: Sequence[BatchItem]) -> BatchSummary:
    classified = [item.result for item in items if item.ok and item.result is not None]
    return BatchSummary(
        files=len(items),
        real=sum(result.verdict == "real" for result in classified),
        fake=sum(result.verdict == "fake" for result in classified),
        uncertain=sum(result.verdict == "uncertain" for result in classified),
        no_face=sum(not result.face_found for result in classified),
        errors=sum(not item.ok for item in items),
    )


def to_csv(items: Sequence[BatchItem]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in items:
        row: dict[str, object] = {"file": item.file, "ok": item.ok, "sorted_to": item.sorted_to or ""}
        if item.result is not None:
            row |= {"verdict": item.result.verdict, "fake_probability": repr(item.result.fake_probability),
                    "faces": len(item.result.faces), "face_found": item.result.face_found, "turned": item.result.turned}
        if item.error is not None:
            row |= {"status": item.error.status, "reason": item.error.reason, "error": item.error.error}
        writer.writerow(row)
    return buffer.getvalue()
