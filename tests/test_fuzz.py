"""Fuzzing: the decoder and the request parsers in-process (hypothesis), and the running service through
its own OpenAPI document (schemathesis), with an API key, as a server open to a network runs.

A short, deterministic run is part of the suite (FUZZ_EXAMPLES examples per property and per API
operation). `make fuzz` runs the same tests long and with fresh randomness:

    FACECHECK_FUZZ_EXAMPLES=3000 .venv/bin/python -m pytest -q tests/test_fuzz.py
"""
from __future__ import annotations

import asyncio
import os

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)
from starlette.requests import Request

from corpus import animated_gif, exif_rotated, gif_bomb, palette_png, rgba_png, save, sixteen_bit_png, tiff_bomb
from service.errors import ServiceError
from service.imaging import ImageError, decode_image
from service.uploads import parse_bool, read_batch_request, read_folder_request, read_image_request
from service_fixtures import encode, png_bomb, synthetic_face

LONG_RUN = "FACECHECK_FUZZ_EXAMPLES" in os.environ
FUZZ_EXAMPLES = int(os.environ.get("FACECHECK_FUZZ_EXAMPLES", "40"))
# The short run is the same on every machine; a long run (make fuzz) draws new examples every time.
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not LONG_RUN, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
MAX_BYTES = 1_000_000


def _seeds() -> list[bytes]:
    """Small valid files of every format and mode the service opens, and a few bombs, to mutate."""
    face = synthetic_face(64, seed=4)
    wide = Image.new("RGB", (96, 48), (70, 90, 120))
    wide.paste(face.resize((48, 48)), (0, 0))
    return [
        encode(face), encode(face, "PNG"), encode(face.convert("L")), save(face.convert("CMYK"), "JPEG"),
        sixteen_bit_png(face), palette_png(face, True), rgba_png(face), save(face.convert("1"), "PNG"),
        animated_gif([face, face.rotate(90)]), exif_rotated(wide, 6), save(face, "WEBP"), save(face, "WEBP", lossless=True),
        save(face, "BMP"), save(face, "TIFF"), save(face, "TIFF", compression="tiff_lzw"), save(face, "JPEG", progressive=True),
        png_bomb(3000), tiff_bomb(20_000), gif_bomb(20_000),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw) -> bytes:
    """A seed file after 1-4 mutations: truncation, byte flips (mostly in the header), overwritten runs,
    insertions, deletions, or a splice of one file's header onto another file's body."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "splice"]))
        header = draw(st.booleans())
        at = draw(st.integers(0, min(len(data), 128) - 1 if header else len(data) - 1))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            run = draw(st.binary(min_size=1, max_size=16))
            data[at: at + len(run)] = run
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at: at + draw(st.integers(1, 64))]
        else:
            other = draw(st.sampled_from(SEEDS))
            data = bytearray(bytes(data[:at]) + other[draw(st.integers(0, len(other) - 1)):])
    return bytes(data)


def assert_decodes_or_refuses(data: bytes, max_pixels: int) -> None:
    try:
        image = decode_image(data, MAX_BYTES, max_pixels)
    except ImageError as exc:
        assert exc.status in (400, 413), exc
        assert exc.reason and str(exc)
    else:
        assert image.mode == "RGB"
        assert 1 <= image.width * image.height <= max_pixels


@FUZZ
@given(data=st.binary(max_size=4096), max_pixels=st.sampled_from([40_000_000, 4096]))
def test_decode_arbitrary_bytes(data, max_pixels):
    assert_decodes_or_refuses(data, max_pixels)


@FUZZ
@given(data=mutated_images(), max_pixels=st.sampled_from([40_000_000, 4096]))
def test_decode_mutated_images(data, max_pixels):
    assert_decodes_or_refuses(data, max_pixels)


# The request parsers, on Starlette requests built here: every outcome is a parsed request or a 4xx.

def _request(body: bytes, content_type: str | None, query: bytes, chunk: int) -> Request:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    pieces = [body[i: i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict:
        piece = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    return Request({"type": "http", "method": "POST", "path": "/", "query_string": query, "headers": headers}, receive)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8", "surrogatepass") + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


latin1 = st.text(st.characters(max_codepoint=255, exclude_categories=["Cs"]), max_size=20)
names = st.sampled_from(["image", "images", "reject_no_face", "sort", "csv", "x"]) | latin1
part = st.tuples(names, st.none() | st.text(max_size=20), st.sampled_from(SEEDS[:3]) | st.binary(max_size=200) | st.sampled_from([b"true", b"0", b"maybe"]))


@st.composite
def requests_(draw) -> tuple[bytes, str | None, bytes]:
    boundary = draw(st.sampled_from(["xyz", "----b0undary", "a" * 70]))
    body = multipart(draw(st.lists(part, max_size=8)), boundary)
    if draw(st.booleans()):
        body = draw(mutated_bytes(body))
    content_type = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}", "multipart/form-data", "image/jpeg",
                                         "application/json", "multipart/form-data; boundary=other"]) | st.none() | latin1)
    query = draw(st.sampled_from([b"", b"reject_no_face=1", b"sort=maybe&csv=true", b"%ff%00=%zz"]) | st.binary(max_size=30))
    return body, content_type, query


@st.composite
def mutated_bytes(draw, body: bytes) -> bytes:
    at = draw(st.integers(0, max(len(body) - 1, 0)))
    return draw(st.sampled_from([body[:at], body[:at] + draw(st.binary(max_size=20)) + body[at + 1:]]))


def _parse(body: bytes, content_type: str | None, query: bytes, chunk: int, max_bytes: int):
    async def run():
        image, image_fields = await read_image_request(_request(body, content_type, query, chunk), max_bytes)
        assert len(image.read()) <= max_bytes + 1
        parse_bool(image_fields.get("reject_no_face"), "reject_no_face")
        sources, batch_fields = await read_batch_request(_request(body, content_type, query, chunk), max_bytes, 3)
        assert 1 <= len(sources) <= 3 and all(len(source.read()) <= max_bytes + 1 for source in sources)
        parse_bool(batch_fields.get("csv"), "csv")

    try:
        asyncio.run(run())
    except ServiceError as exc:
        assert exc.status in (400, 413, 415, 422), exc


@FUZZ
@given(request=requests_(), chunk=st.sampled_from([7, 4096]), max_bytes=st.sampled_from([100, MAX_BYTES]))
def test_upload_parsing(request, chunk, max_bytes):
    _parse(*request, chunk, max_bytes)


@FUZZ
@given(body=st.binary(max_size=300) | st.builds(lambda text: text.encode("utf-8", "surrogatepass"), st.text(max_size=100))
       | st.sampled_from([b'{"folder": "a"}', b'{"folder": "a", "recursive": "maybe"}', b"[]", b'{"folder": "\\ud800"}']))
def test_folder_request_parsing(body):
    try:
        asyncio.run(read_folder_request(_request(body, "application/json", b"", 4096)))
    except ServiceError as exc:
        assert exc.status in (400, 422), exc


# The running service, through its OpenAPI document: no 5xx, and every answer as the document says.
# schemathesis's own pytest loader (from_fixture) does not run under pytest 9, so each operation's cases
# come from its hypothesis strategy, in schema-valid (positive) and schema-violating (negative) forms.

OPERATIONS = [("GET", "/healthz"), ("GET", "/livez"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/classify"),
              ("POST", "/annotate"), ("POST", "/classify_batch"), ("POST", "/classify_folder")]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.fixture(scope="session")
def api_schema(keyed_server):
    """The document of a server with API keys, as one open to a network runs; every case carries its key."""
    return schemathesis.openapi.from_url(f"{keyed_server.url}/docs.json", timeout=120)


def test_every_operation_is_fuzzed(api_schema):
    documented = {(operation.ok().method.upper(), operation.ok().path) for operation in api_schema.get_all_operations()}
    assert documented == set(OPERATIONS)


# Schema-violating requests exist only where there is a body to break: the POST operations.
CASES = [(method, path, mode) for method, path in OPERATIONS
         for mode in ([GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if method == "POST" else [GenerationMode.POSITIVE])]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{method} {path} {mode.value}" for method, path, mode in CASES])
def test_api_against_its_openapi_document(api_schema, keyed_server, method, path, mode):
    @settings(FUZZ, max_examples=max(FUZZ_EXAMPLES // 4, 5))
    @given(case=api_schema[path][method].as_strategy(mode))
    def check(case):
        response = case.call_and_validate(checks=CHECKS, headers=keyed_server.headers, timeout=120)
        assert response.status_code != 401, response.text  # the key went with it: every answer was the endpoint's own

    check()
