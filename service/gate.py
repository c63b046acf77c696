"""The ASGI middlewares in front of FaceCheck's endpoints: keys, limits, the request timeout, and JSON
on every error.

BentoML wraps a service's app in its own middlewares (metrics, tracing, the access log, its timeout)
and then in the service's, outermost first, in the order service.service adds them:

- `JsonErrors`: an error answer that is not in the project's shape (`{"error", "status", "reason"}`),
  such as Starlette's 404 and 405, BentoML's 500 or /readyz's 500 while starting, is rewritten into it,
  with its status and headers kept; an exception that escapes the app is a JSON 500.
- `Deadline`: a request not answered within FACECHECK_REQUEST_TIMEOUT_S is cancelled and answered 504,
  in our shape. BentoML's own timeout, whose 504 is not, is set later than this one and never fires first.
- `Gate`: on every path but health, docs and the page, the API key (401), then the key's rate (429
  `rate_limited`), then the worker's share of the requests in flight (429 `busy`), both with Retry-After.
"""
from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError, retry_later
from service.keys import ApiKeys, presented_key
from service.limits import InFlight, RateLimiter
from service.metrics import get_metrics
from service.schemas import ErrorBody

log = logging.getLogger("bentoml.facecheck")
OPEN_PATHS = frozenset({"/", "/livez", "/healthz", "/readyz", "/docs", "/docs.json", "/schema.json", "/ui"})
OPEN_PREFIXES = ("/static_content/", "/assets/")  # Swagger UI's files
UNAUTHORIZED = ServiceError("an API key is needed: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", 401, "unauthorized",
                            {"WWW-Authenticate": 'Bearer realm="facecheck"'})


def needs_key(path: str, metrics_need_key: bool) -> bool:
    """Where the server has keys: every path but health, docs and the page (and /metrics unless configured so)."""
    if path == "/metrics":
        return metrics_need_key
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


def limited(path: str) -> bool:
    """The paths whose requests count against the rate and the cap: the same, less /metrics."""
    return path != "/metrics" and needs_key(path, metrics_need_key=True)


class Gate:
    def __init__(self, app: ASGIApp, keys: ApiKeys, metrics_need_key: bool, in_flight: int, rate_per_minute: int | None) -> None:
        self.app = app
        self.keys = keys
        self.metrics_need_key = metrics_need_key
        self.in_flight = InFlight(in_flight)
        self.rate = RateLimiter(rate_per_minute) if rate_per_minute else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        caller = None
        if self.keys.required and needs_key(path, self.metrics_need_key):
            caller = self.keys.identify(presented_key(Headers(scope=scope)))
            if caller is None:
                return await refuse(UNAUTHORIZED, scope, receive, send)
        if not limited(path):
            return await self.app(scope, receive, send)
        if self.rate is not None:
            wait_s = await anyio.to_thread.run_sync(self.rate.take, caller or client_address(scope))
            if wait_s:
                message = f"more than {self.rate.capacity:g} requests a minute (FACECHECK_RATE_PER_MINUTE); retry in {wait_s} s"
                return await refuse(retry_later(message, 429, "rate_limited", wait_s), scope, receive, send)
        with self.in_flight.slot() as admitted:
            if not admitted:
                message = f"this worker has {self.in_flight.limit} requests in flight, its share of FACECHECK_MAX_CONCURRENCY; retry in 1 s"
                return await refuse(retry_later(message, 429, "busy", 1), scope, receive, send)
            await self.app(scope, receive, send)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"address:{client[0]}" if client else "address:unknown"


async def refuse(error: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    get_metrics().errors.labels(reason=error.reason).inc()
    await error.response()(scope, receive, send)


class Deadline:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        answering = asyncio.Event()

        async def send_and_mark(message: Message) -> None:
            answering.set()
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
        started = asyncio.ensure_future(answering.wait())
        try:
            await asyncio.wait({work, started}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if work.done() or answering.is_set():  # answered in time: let the body finish, however long it takes
                return await work
            work.cancel()
            await asyncio.wait({work})
        finally:
            started.cancel()
            work.cancel()
        error = ServiceError(f"not able to process the request in {self.timeout_s:g} seconds (FACECHECK_REQUEST_TIMEOUT_S)", 504, "timeout")
        await refuse(error, scope, receive, send)


class JsonErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            return await self.app(scope, receive, send)
        held: Message | None = None  # an error answer's start, held until its body shows whether it is in our shape
        body = bytearray()
        started = False

        async def reshape(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    for part in in_our_shape(held, bytes(body)):
                        await send(part)
                return
            await send(message)

        try:
            await self.app(scope, receive, reshape)
        except Exception:
            if started:
                raise
            log.exception("%s %s failed", scope["method"], scope["path"])
            await ServiceError("the server failed to answer; see its log", 500, "internal_server_error").response()(scope, receive, send)


def in_our_shape(start: Message, body: bytes) -> tuple[Message, Message]:
    """The start and body messages of an error answer, rewritten into ErrorBody unless already in it."""
    if is_error_body(body):
        return start, {"type": "http.response.body", "body": body}
    status = start["status"]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    text = ErrorBody(error=error_message(body) or phrase, status=status, reason=phrase.lower().replace(" ", "_").replace("-", "_")).model_dump_json()
    data = text.encode()
    headers = [(name, value) for name, value in start.get("headers", []) if name.lower() not in (b"content-length", b"content-type")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    return {**start, "headers": headers}, {"type": "http.response.body", "body": data}


def is_error_body(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and set(data) == set(ErrorBody.model_fields) and isinstance(data["status"], int)


def error_message(body: bytes) -> str | None:
    """What an error answer said: its JSON `error` or `detail`, or its text when short."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text if 0 < len(text) <= 300 else None
    if isinstance(data, dict):
        for key in ("error", "detail"):
            if isinstance(data.get(key), str) and data[key]:
                return data[key]
    return None
