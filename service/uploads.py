"""What the HTTP endpoints accept, parsed by us rather than by BentoML.

BentoML's own input parsing answers bad input on its own terms (a 400 with its own body for a field,
a 500 for bytes that PIL cannot open), reads a whole body or uploaded file into memory whatever its size,
and knows neither raw `image/*` bodies nor query parameters. The endpoints therefore take the Starlette
request as it came (`RequestInput`) and parse it here, so every refusal is a ServiceError with our JSON
body and an oversized upload is refused early. The `*Form` models are the typed contract, in BentoML's
own types: the OpenAPI document and /schema.json show them, and BentoML's clients build their requests
from them (a multipart upload for the file fields), which this module parses like any other.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar

import bentoml
from bentoml._internal.service.openapi.specification import Schema
from bentoml.validators import ContentType
from pydantic import ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from service.engine import Source
from service.errors import ServiceError, bad_field
from service.imaging import format_names

FORM_OVERHEAD = 1024 * 1024  # multipart boundaries and text fields around one image
TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}
# A file field to BentoML: /schema.json says `"type": "file"`, so its clients send it as a multipart file.
ImageFile = Annotated[Path, ContentType("image/*")]


class ClassifyForm(bentoml.IODescriptor):
    """One image, as the multipart field `image`, or as the whole request body with Content-Type image/*
    (or application/octet-stream). `reject_no_face` is also accepted as a query parameter."""

    image: ImageFile = Field(description=f"the photo: {format_names()}, or those of them FACECHECK_FORMATS allows")
    reject_no_face: bool = Field(False, description="answer 422 when no face is found, instead of classifying the whole image")


class BatchForm(bentoml.IODescriptor):
    """Many images in one multipart request, one `images` part per file. `sort` and `csv` are also
    accepted as query parameters."""

    images: list[ImageFile] = Field(min_length=1, description="the photos, in the order the results should come back")
    sort: bool = Field(False, description="copy each classified file into <output root>/real/ or /fake/")
    csv: bool = Field(False, description="also return the results as CSV text")


class FolderRequest(bentoml.IODescriptor):
    """A folder of images under the server's data root (FACECHECK_DATA_ROOT)."""

    model_config = ConfigDict(extra="forbid")
    folder: str = Field(description="path relative to the data root, e.g. incoming/2024-05")
    recursive: bool = Field(False, description="include subfolders (the sorted output folder is skipped)")
    sort: bool = Field(False, description="copy each classified file into <output root>/real/ or /fake/")
    csv: bool = Field(False, description="also return the results as CSV text")


class RequestInput(bentoml.IODescriptor):
    """A BentoML input spec that hands the API function the Starlette request, unparsed.

    Subclasses name the typed model of the body (`documented_by`) and its media type; the OpenAPI
    document and /schema.json show that model, and a client that knows the service builds its request
    from it.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    request: Request
    documented_by: ClassVar[type[bentoml.IODescriptor]]
    media_type: ClassVar[str | None] = "application/json"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # `request` is no part of the body: listed here, the OpenAPI document gives it no encoding entry.
        cls.multipart_fields = ["request"]

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> RequestInput:
        return cls.model_construct(request=request)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return cls.documented_by.model_json_schema(*args, **kwargs)

    @classmethod
    def openapi_components(cls, name: str) -> dict[str, Schema]:
        """As BentoML's, but in serialization mode: OpenAPI has no `file` type, and shows a file as a binary string."""
        from _bentoml_sdk.service.openapi import REF_TEMPLATE

        schema = cls.model_json_schema(ref_template=REF_TEMPLATE, mode="serialization")
        defs = schema.pop("$defs", {})
        return {cls.__name__: Schema(**{**schema, "title": cls.__name__}), **{key: Schema(**value) for key, value in defs.items()}}

    @classmethod
    def from_inputs(cls, *args: Any, **kwargs: Any) -> bentoml.IODescriptor:
        """The client's side (bentoml.depends, or a client given the service): the typed body to send."""
        return cls.documented_by.from_inputs(*args, **kwargs)


class ClassifyInput(RequestInput):
    documented_by = ClassifyForm
    media_type = "multipart/form-data"


class BatchInput(RequestInput):
    documented_by = BatchForm
    media_type = "multipart/form-data"


class FolderInput(RequestInput):
    documented_by = FolderRequest


def parse_bool(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise bad_field(f"{name} must be true or false, not {value!r}")


async def read_image_request(request: Request, max_bytes: int) -> tuple[Source, dict[str, str]]:
    """POST /classify: the one image and the text fields (query parameters, then form fields)."""
    fields = dict(request.query_params)
    if _media_type(request) != "multipart/form-data":
        _refuse_long_body(request, max_bytes, "upload")
        return Source("upload", _constant(await _read_body(request, max_bytes))), fields
    _refuse_long_body(request, max_bytes + FORM_OVERHEAD, "upload")
    form = await _form(request, 1, ServiceError("send one image per request; /classify_batch takes many", 422, "bad_field"))
    fields.update({key: value for key, value in form.multi_items() if isinstance(value, str)})
    files = [value for value in form.getlist("image") if isinstance(value, UploadFile)]
    if not files:
        raise bad_field("no image: send a multipart file field named 'image', or the image bytes as the body")
    return _upload_source(files[0], max_bytes, "upload"), fields


async def read_batch_request(request: Request, max_bytes: int, max_files: int) -> tuple[list[Source], dict[str, str]]:
    """POST /classify_batch: every file of the `images` field, in order, and the text fields."""
    if _media_type(request) != "multipart/form-data":
        raise ServiceError("send the images as multipart/form-data, one 'images' part per file", 415, "unsupported_media_type")
    fields = dict(request.query_params)
    _refuse_long_body(request, (max_bytes + FORM_OVERHEAD) * max_files, "batch")
    form = await _form(request, max_files, ServiceError(
        f"more than {max_files} files in one request (FACECHECK_MAX_BATCH_FILES)", 413, "too_many_files"))
    fields.update({key: value for key, value in form.multi_items() if isinstance(value, str)})
    files = [value for value in form.getlist("images") if isinstance(value, UploadFile)]
    if not files:
        raise bad_field("no images: send one multipart file field named 'images' per file")
    return [_upload_source(file, max_bytes, f"upload-{index}") for index, file in enumerate(files, 1)], fields


async def read_folder_request(request: Request) -> FolderRequest:
    body = await _read_body(request, 64 * 1024)
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceError(f"the body is not JSON: {exc}", 400, "bad_json") from None
    try:
        return FolderRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise bad_field(f"bad folder request: {problems}") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _refuse_long_body(request: Request, limit: int, what: str) -> None:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ServiceError(f"the {what} is {length} bytes; the limit is {limit}", 413, "too_many_bytes")


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, stopping as soon as it passes max_bytes (decode_image then answers 413)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise ServiceError(f"the body is over {max_bytes} bytes, the limit", 413, "too_many_bytes")
    except ClientDisconnect:
        raise ServiceError("the client disconnected before sending the whole body", 400, "incomplete_body") from None
    return b"".join(chunks)


async def _form(request: Request, max_files: int, too_many_files: ServiceError) -> Any:
    try:
        return await request.form(max_files=max_files, max_fields=100)
    except (HTTPException, MultiPartException) as exc:
        # Starlette reports every multipart problem as one exception type; its message tells them apart.
        message = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc)
        if message.startswith("Too many files"):
            raise too_many_files from None
        raise ServiceError(f"malformed multipart body: {message}", 400, "bad_multipart") from None
    except ClientDisconnect:
        raise ServiceError("the client disconnected before sending the whole body", 400, "incomplete_body") from None


def _upload_source(upload: UploadFile, max_bytes: int, fallback: str) -> Source:
    name = Path(upload.filename).name if upload.filename else fallback
    return Source(name or fallback, lambda: upload.file.read(max_bytes + 1))


def _constant(data: bytes):
    return lambda: data
