"""Client-facing errors: one exception type, one JSON body, one place that maps other errors onto it.

Every refusal the service makes is a `ServiceError` with an HTTP status and a short `reason` (the label
of the errors metric). The body is always `{"error": message, "status": code, "reason": reason}`.
`ERRORS` lists every status an endpoint may answer with, and `document_errors` puts them in the OpenAPI
document.
"""
from __future__ import annotations

import asyncio
from http import HTTPStatus

from starlette.responses import JSONResponse

from service.imaging import ImageError
from service.schemas import ErrorBody, FileError


ERRORS = {
    400: "Not an image in a supported format, truncated or corrupt; a malformed body",
    401: "No API key, or a wrong one, where the server has keys (FACECHECK_API_KEYS): send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    403: "A folder or file outside the data root, or not a regular file",
    404: "A folder that does not exist",
    413: "Over FACECHECK_MAX_BYTES, FACECHECK_MAX_PIXELS or FACECHECK_MAX_BATCH_FILES",
    415: "/classify_batch without a multipart body",
    422: "A bad field; an image of one flat colour (blank); or no face with reject_no_face=true",
    429: "Past FACECHECK_RATE_PER_MINUTE for this key (rate_limited) or FACECHECK_MAX_CONCURRENCY requests in flight (busy); "
         "retry after the Retry-After header's seconds",
    503: "Overloaded (the classifier cannot answer within FACECHECK_BATCH_LATENCY_MS), restarting or too slow to answer; "
         "retry after Retry-After's seconds",
    504: "Past FACECHECK_REQUEST_TIMEOUT_S",
}


class ServiceError(Exception):
    def __init__(self, message: str, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.headers = headers or {}

    def body(self) -> ErrorBody:
        return ErrorBody(error=self.message, status=self.status, reason=self.reason)

    def file_error(self, file: str) -> FileError:
        return FileError(file=file, status=self.status, error=self.message, reason=self.reason)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers)


def retry_later(message: str, status: int, reason: str, after_s: int) -> ServiceError:
    """A 429 or 503 that tells the client when to come back."""
    return ServiceError(message, status, reason, {"Retry-After": str(after_s)})


def from_image_error(exc: ImageError) -> ServiceError:
    return ServiceError(str(exc), exc.status, exc.reason)


def from_classifier_error(exc: Exception) -> ServiceError | None:
    """The classifier dependency's refusals that are not bugs: BentoML sheds load with 503, a call whose
    worker died (and was not back for the retry) is unavailable, and one not answered within the
    Classifier's timeout (a replacement worker still starting on a busy machine) timed out."""
    from bentoml.exceptions import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable):
        return retry_later("the classifier is overloaded; retry later", 503, "overloaded", 1)
    if classifier_disconnected(exc):
        return retry_later(f"the classifier is restarting ({exc.__class__.__name__}); retry later", 503, "classifier_unavailable", 5)
    if classifier_timed_out(exc):
        return retry_later("the classifier did not answer in time; retry later", 503, "classifier_timeout", 5)
    return None


def classifier_disconnected(exc: Exception) -> bool:
    """The connection to the classifier's worker broke mid-call (the worker died), as opposed to a timeout."""
    import aiohttp

    broken = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)  # before the answer, or while reading it
    return isinstance(exc, broken) and not isinstance(exc, asyncio.TimeoutError)


def classifier_timed_out(exc: Exception) -> bool:
    """BentoML's client gave up waiting (asyncio.TimeoutError), or the Classifier's own timeout answered 504."""
    from bentoml.exceptions import BentoMLException

    return isinstance(exc, asyncio.TimeoutError) or (isinstance(exc, BentoMLException) and exc.error_code == HTTPStatus.GATEWAY_TIMEOUT)


def bad_field(message: str) -> ServiceError:
    return ServiceError(message, 422, "bad_field")


def document_errors() -> None:
    """Put ERRORS, with our body, in the OpenAPI document for every endpoint.

    BentoML 1.4 documents each API with its own 400/404/500 bodies, from one module-level table in its
    OpenAPI generator, and has no way to declare others; so the entries are set in that table. The 500
    is ours too (service.gate.JsonErrors answers it).
    """
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import MediaType, Response, Schema

    def response(description: str, schema: dict) -> Response:
        return Response(description=description, content={"application/json": MediaType(schema=Schema(**schema))})

    body = ErrorBody.model_json_schema()
    descriptions = ERRORS | {500: "A fault of the server's; see its log"}
    openapi.error_responses.update({status: response(description, body) for status, description in descriptions.items()})
