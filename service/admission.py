"""Load shedding for the Classifier when adaptive batching is off.

With batching on, BentoML's dispatcher refuses calls that would miss their latency budget. Without it,
calls run side by side in threads, and under a sustained overload they would queue without bound. An
`Admission` lets `limit` calls run at once and refuses, with BentoML's 503, a call that has waited its
whole budget for a turn, so that an overloaded server answers "retry later" instead of ever slower.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator


class Admission:
    def __init__(self, limit: int, budget_s: float) -> None:
        self.limit = limit
        self.budget_s = budget_s
        self._slots: asyncio.Semaphore | None = None  # made in the serving event loop, on first use

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one of the `limit` slots; raises bentoml.exceptions.ServiceUnavailable after budget_s without one."""
        from bentoml.exceptions import ServiceUnavailable

        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.budget_s)
        except TimeoutError:
            raise ServiceUnavailable(f"overloaded: no free classifier slot within {self.budget_s * 1000:.0f} ms") from None
        try:
            yield
        finally:
            self._slots.release()
