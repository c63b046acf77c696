"""Client-facing errors: one exception type, one JSON body, one place that maps other errors onto it.

Every refusal the service makes is a `ServiceError` with an HTTP status and a short `reason` (the label
of the errors metric). The body is always `{"error": message, "status": code, "reason": reason}`.
"""
from __future__ import annotations

from starlette.responses import JSONResponse

from service.imaging import ImageError
from service.schemas import ErrorBody, FileError


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
    """The classifier dependency's refusals that are not bugs: BentoML sheds load with 503."""
    from bentoml.exceptions import ServiceUnavailable

    if isinstance(exc, ServiceUnavailable):
        return ServiceError("the classifier is overloaded; retry later", 503, "overloaded")
    return None


def bad_field(message: str) -> ServiceError:
    return ServiceError(message, 422, "bad_field")
