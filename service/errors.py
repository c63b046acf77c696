"""Client-facing errors: one exception type, one JSON body, one place that maps other errors onto it.

Every refusal the service makes is a `ServiceError` with an HTTP status and a short `reason` (the label
of the errors metric). The body is always `{"error": message, "status": code, "reason": reason}`.
`ERRORS` lists every status an endpoint may answer with, and `document_errors` puts them in the OpenAPI
document.
"""
from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse

from service.imaging import ImageError
from service.schemas import ErrorBody, FileError


ERRORS = {
    400: "Not an image in a supported format, truncated or corrupt; a malformed body",
    403: "A folder or file outside the data root, or not a regular file",
    404: "A folder that does not exist",
    413: "Over FACECHECK_MAX_BYTES, FACECHECK_MAX_PIXELS or FACECHECK_MAX_BATCH_FILES",
    415: "/classify_batch without a multipart body",
    422: "A bad field, or no face with reject_no_face=true",
    503: "Overloaded (the classifier cannot answer within FACECHECK_BATCH_LATENCY_MS) or restarting; retry later",
}
TIMEOUT_DESCRIPTION = "Past FACECHECK_REQUEST_TIMEOUT_S (BentoML's own answer: {\"error\": message})"


class ServiceError(Exception):
    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason

    def body(self) -> ErrorBody:
        return ErrorBody(error=self.message, status=self.status, reason=self.reason)

    def file_error(self, file: str) -> FileError:
        return FileError(file=file, status=self.status, error=self.message, reason=self.reason)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status)


def from_image_error(exc: ImageError) -> ServiceError:
    return ServiceError(str(exc), exc.status, exc.reason)


def from_classifier_error(exc: Exception) -> ServiceError | None:
    """The classifier dependency's refusals that are not bugs: BentoML sheds load with 503, and a call
    whose worker died (and was not back for the retry) is unavailable, not a server bug."""
    from bentoml.exceptions import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable):
        return ServiceError("the classifier is overloaded; retry later", 503, "overloaded")
    if classifier_disconnected(exc):
        return ServiceError(f"the classifier is restarting ({exc.__class__.__name__}); retry later", 503, "classifier_unavailable")
    return None


def classifier_disconnected(exc: Exception) -> bool:
    """The connection to the classifier's worker broke mid-call (the worker died), as opposed to a timeout."""
    import aiohttp

    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, asyncio.TimeoutError)


def bad_field(message: str) -> ServiceError:
    return ServiceError(message, 422, "bad_field")


def document_errors() -> None:
    """Put ERRORS (with our body) and BentoML's 504 in the OpenAPI document, for every endpoint.

    BentoML 1.4 documents each API with its own 400/404/500 bodies, from one module-level table in its
    OpenAPI generator, and has no way to declare others; so the entries are set in that table.
    """
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import MediaType, Response, Schema

    def response(description: str, schema: dict) -> Response:
        return Response(description=description, content={"application/json": MediaType(schema=Schema(**schema))})

    body = ErrorBody.model_json_schema()
    openapi.error_responses.update({status: response(description, body) for status, description in ERRORS.items()})
    timeout_body = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    openapi.error_responses[504] = response(TIMEOUT_DESCRIPTION, timeout_body)
