"""Every endpoint through BentoML's own clients (SyncHTTPClient, AsyncHTTPClient) against the real server,
with the argument types a user tries first: paths, PIL images, booleans."""
from __future__ import annotations

import asyncio
import json
import uuid
from http import HTTPStatus
from pathlib import Path

import bentoml
import pytest
import requests
from bentoml.exceptions import BentoMLException
from PIL import Image

from service.schemas import BatchResult, ImageResult
from service_fixtures import assert_consistent, assert_summary_adds_up, encode, gradient, synthetic_face


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, server) -> dict[str, Path]:
    """A face, a face-less ramp, a text file, and a JPEG padded past the server's byte limit."""
    folder = tmp_path_factory.mktemp("client-photos")
    face = encode(synthetic_face(seed=7))
    files = {"face.jpg": face, "ramp.png": encode(gradient(), "PNG"), "notes.txt": b"not an image",
             "big.jpg": face + b"\0" * (server.max_bytes + 10 - len(face))}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


@pytest.fixture(scope="module")
def client(server):
    with bentoml.SyncHTTPClient(server.url, timeout=300) as client:
        yield client


def types(node: object) -> set[str]:
    """Every `type` value in a JSON schema document."""
    if isinstance(node, dict):
        own = {node["type"]} if isinstance(node.get("type"), str) else set()
        return own.union(*map(types, node.values()))
    if isinstance(node, list):
        return set().union(*map(types, node))
    return set()


def refusal(caught: pytest.ExceptionInfo[BentoMLException]) -> tuple[HTTPStatus, str]:
    """The status and reason the client's exception carries; its message is the service's JSON body."""
    body = json.loads(str(caught.value))
    assert body["status"] == caught.value.error_code.value and body["error"]
    return caught.value.error_code, body["reason"]


def test_schema_gives_clients_file_fields_and_the_openapi_document_binary_strings(server):
    """/schema.json, which BentoML's clients read, types the uploads as files (so they send multipart); OpenAPI 3 has no
    file type, so /docs.json, read by Swagger UI and schemathesis, keeps them binary strings, in its components too."""
    routes = {route["name"]: route["input"]["properties"] for route in requests.get(f"{server.url}/schema.json", timeout=10).json()["routes"]}
    assert routes["classify"]["image"]["type"] == "file" and routes["classify_batch"]["images"]["items"]["type"] == "file"
    assert routes["classify"]["reject_no_face"]["type"] == "boolean" and routes["classify_folder"]["folder"]["type"] == "string"
    spec = requests.get(f"{server.url}/docs.json", timeout=10).json()
    assert "file" not in types(spec)
    image = spec["components"]["schemas"]["ClassifyInput"]["properties"]["image"]
    assert (image["type"], image["format"]) == ("string", "binary")


def test_classify_a_path_and_a_pil_image(client, photos):
    by_path = ImageResult.model_validate(client.classify(image=photos["face.jpg"]))
    with Image.open(photos["face.jpg"]) as image:
        by_image = ImageResult.model_validate(client.classify(image=image))
    assert by_path.file == by_image.file == "face.jpg"
    assert by_path.face_found and by_path.verdict == by_image.verdict
    assert by_image.fake_probability == pytest.approx(by_path.fake_probability, abs=1e-6)
    assert_consistent(by_path.model_dump())


def test_classify_reject_no_face_is_a_422(client, photos):
    assert not client.classify(image=photos["ramp.png"], reject_no_face=False)["face_found"]
    with pytest.raises(BentoMLException) as caught:
        client.classify(image=photos["ramp.png"], reject_no_face=True)
    assert refusal(caught) == (HTTPStatus.UNPROCESSABLE_ENTITY, "no_face")


@pytest.mark.parametrize("endpoint", ["classify", "annotate"])
def test_a_non_image_and_an_oversized_photo_are_refused(client, photos, endpoint):
    call = getattr(client, endpoint)
    with pytest.raises(BentoMLException) as caught:
        call(image=photos["notes.txt"])
    assert refusal(caught) == (HTTPStatus.BAD_REQUEST, "not_an_image")
    with pytest.raises(BentoMLException) as caught:
        call(image=photos["big.jpg"])
    assert refusal(caught) == (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_many_bytes")


def test_annotate_returns_the_png(client, photos):
    png = client.annotate(image=photos["face.jpg"])
    assert isinstance(png, Path)
    with Image.open(png) as picture, Image.open(photos["face.jpg"]) as photo:
        assert picture.format == "PNG" and picture.size == photo.size


def test_classify_batch(client, photos, server):
    names = ["face.jpg", "notes.txt", "ramp.png", "big.jpg"]
    answer = BatchResult.model_validate(client.classify_batch(images=[photos[name] for name in names], csv=True, sort=False))
    assert [item.file for item in answer.results] == names
    assert [item.ok for item in answer.results] == [True, False, True, False]
    assert [(item.error.status, item.error.reason) for item in answer.results if item.error] == [(400, "not_an_image"), (413, "too_many_bytes")]
    assert answer.csv.splitlines()[0].startswith("file,")
    assert_summary_adds_up(answer.model_dump())
    with pytest.raises(BentoMLException) as caught:
        client.classify_batch(images=[photos["face.jpg"]] * (server.max_batch_files + 1))
    assert refusal(caught) == (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_many_files")


def test_classify_batch_sort_copies_the_files(client, photos, server):
    answer = BatchResult.model_validate(client.classify_batch(images=[photos["face.jpg"]], sort=True))
    copied = server.sorted_root / answer.results[0].sorted_to
    assert copied.read_bytes() == photos["face.jpg"].read_bytes()
    assert copied.parent.name == answer.results[0].result.verdict


def test_classify_folder(client, photos, server):
    name = f"client-{uuid.uuid4().hex[:8]}"
    (server.data_root / name / "sub").mkdir(parents=True)
    (server.data_root / name / "face.jpg").write_bytes(photos["face.jpg"].read_bytes())
    (server.data_root / name / "sub" / "ramp.png").write_bytes(photos["ramp.png"].read_bytes())
    flat = BatchResult.model_validate(client.classify_folder(folder=name))
    assert [item.file for item in flat.results] == [f"{name}/face.jpg"] and flat.csv is None
    deep = BatchResult.model_validate(client.classify_folder(folder=name, recursive=True, sort=False, csv=True))
    assert [item.file for item in deep.results] == [f"{name}/face.jpg", f"{name}/sub/ramp.png"] and deep.csv
    with pytest.raises(BentoMLException) as caught:
        client.classify_folder(folder="../outside")
    assert refusal(caught)[0] == HTTPStatus.FORBIDDEN


def test_the_async_client(server, photos):
    async def calls() -> tuple[dict, bytes, dict, BentoMLException]:
        async with bentoml.AsyncHTTPClient(server.url, timeout=300) as client:
            result = await client.classify(image=photos["face.jpg"], reject_no_face=True)
            png = (await client.annotate(image=photos["face.jpg"])).read_bytes()
            batch = await client.classify_batch(images=[photos["face.jpg"], photos["ramp.png"]])
            try:
                await client.classify(image=photos["big.jpg"])
            except BentoMLException as exc:
                return result, png, batch, exc
            raise AssertionError("an oversized photo was accepted")

    result, png, batch, refused = asyncio.run(calls())
    assert result["file"] == "face.jpg" and result["face_found"]
    assert png.startswith(b"\x89PNG")
    assert [item["ok"] for item in batch["results"]] == [True, True]
    assert refused.error_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and json.loads(str(refused))["reason"] == "too_many_bytes"


def test_a_service_depending_on_facecheck_gets_typed_models(server, photos):
    """What another BentoML service gets from `bentoml.depends(FaceCheck, url=...)`: the client inside its proxy (which
    itself needs a served service's configuration) builds requests from the typed input models and answers with the output models."""
    from _bentoml_impl.client.proxy2 import AsyncClient

    from service.service import FaceCheck

    async def calls() -> tuple[ImageResult, BatchResult, bytes]:
        async with AsyncClient(server.url, service=FaceCheck, media_type="application/json", timeout=300) as client:
            return (await client.classify(image=photos["face.jpg"], reject_no_face=True),
                    await client.classify_batch(images=[photos["face.jpg"]], csv=True),
                    (await client.annotate(image=photos["face.jpg"])).read_bytes())

    result, batch, png = asyncio.run(calls())
    assert isinstance(result, ImageResult) and result.file == "face.jpg" and result.face_found
    assert isinstance(batch, BatchResult) and batch.results[0].ok and batch.csv
    assert png.startswith(b"\x89PNG")
