"""How much a caller may ask: requests in flight in one worker, and requests per minute per key.

`InFlight` counts one API worker's requests and refuses past its share of FACECHECK_MAX_CONCURRENCY,
as BentoML's traffic.max_concurrency does (a share per worker), but in the project's JSON and with
Retry-After. `RateLimiter` is a token bucket per key, FACECHECK_RATE_PER_MINUTE tokens refilled over a
minute. The API workers are separate processes, so the buckets live in one SQLite file that all of them
share, in the folder `bentoml serve` makes afresh for its workers at each start (PROMETHEUS_MULTIPROC_DIR;
prometheus_client reads only its *.db files there).
"""
from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator


class InFlight:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Yields whether the request may run (it holds a slot until the block ends) or must be refused."""
        if self.count >= self.limit:
            yield False
            return
        self.count += 1
        try:
            yield True
        finally:
            self.count -= 1


def shared_state_dir() -> Path:
    return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir())


class RateLimiter:
    def __init__(self, per_minute: int, path: Path | None = None) -> None:
        self.capacity = float(per_minute)
        self.per_s = per_minute / 60.0
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def take(self, key: str) -> int:
        """Spends one of `key`'s tokens and returns 0, or, with none left, the whole seconds until there is one."""
        with self._lock:
            db = self._connection()
            now = time.time()
            db.execute("BEGIN IMMEDIATE")  # one worker at a time reads and writes a bucket
            try:
                row = db.execute("SELECT tokens, at FROM buckets WHERE key = ?", (key,)).fetchone()
                tokens = self.capacity if row is None else min(self.capacity, row[0] + max(0.0, now - row[1]) * self.per_s)
                wait = 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) / self.per_s))
                left = tokens - 1 if wait == 0 else tokens
                db.execute("INSERT OR REPLACE INTO buckets (key, tokens, at) VALUES (?, ?, ?)", (key, left, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return wait

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.path or shared_state_dir() / "facecheck-rates.sqlite"  # read in the worker, whose environment names the folder
            db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL)")
            self._db = db
        return self._db
