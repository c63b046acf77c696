"""The service's plain modules, without a server: folders, sorted copies, batch summaries, parsing, errors."""
from __future__ import annotations

import asyncio
import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

from service.batch import batch_result
from service.config import get_settings
from service.engine import Engine, Source
from service.errors import ServiceError
from service.folders import SortedCopier, list_files, resolve_folder, safe_name
from service.metrics import get_metrics
from service.pipeline import Pipeline
from service.schemas import BatchItem, FileError, ImageResult, ModelInfo
from service.uploads import parse_bool
from service_fixtures import encode, gradient, uncalibrated_card


@pytest.fixture()
def root(tmp_path):
    data = tmp_path / "data"
    (data / "in" / "deep").mkdir(parents=True)
    (data / "in" / "b.jpg").write_bytes(b"b")
    (data / "in" / "a.jpg").write_bytes(b"a")
    (data / "in" / "deep" / "c.jpg").write_bytes(b"c")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jpg").write_bytes(b"s")
    return data


@pytest.mark.parametrize("folder", ["..", "in/../..", "/etc", "\\etc", "C:/Windows", "in/../../outside"])
def test_resolve_folder_refuses_escapes(root, folder):
    with pytest.raises(ServiceError) as caught:
        resolve_folder(root, folder)
    assert caught.value.status == 403


def test_resolve_folder(root, tmp_path):
    assert resolve_folder(root, "in") == (root / "in").resolve()
    assert resolve_folder(root, "") == root.resolve()
    (root / "link-out").symlink_to(tmp_path / "outside")
    (root / "link-in").symlink_to(root / "in")
    assert resolve_folder(root, "link-in") == (root / "in").resolve()
    for folder, status in (("link-out", 403), ("missing", 404), ("in/a.jpg", 404), ("bad\x00name", 422)):
        with pytest.raises(ServiceError) as caught:
            resolve_folder(root, folder)
        assert caught.value.status == status, folder


def test_list_files_order_recursion_exclusion_and_errors(root, tmp_path):
    (root / "in" / "leak.jpg").symlink_to(tmp_path / "outside" / "secret.jpg")
    (root / "in" / "loop").symlink_to(root / "in")
    os.mkfifo(root / "in" / "pipe.jpg")
    (root / "in" / "sorted").mkdir()
    (root / "in" / "sorted" / "copy.jpg").write_bytes(b"x")
    folder = resolve_folder(root, "in")
    flat = list_files(root, folder, recursive=False, limit=10)
    assert [f.name for f in flat] == ["in/a.jpg", "in/b.jpg", "in/leak.jpg", "in/pipe.jpg"]
    assert [f.error.status if f.error else None for f in flat] == [None, None, 403, 403]
    assert flat[0].read(10) == b"a"
    with pytest.raises(ServiceError):
        flat[3].read(10)  # the FIFO: refused, not opened for reading
    deep = list_files(root, folder, recursive=True, limit=10, exclude=root / "in" / "sorted")
    assert [f.name for f in deep] == ["in/a.jpg", "in/b.jpg", "in/deep/c.jpg", "in/leak.jpg", "in/pipe.jpg"]
    with pytest.raises(ServiceError) as caught:
        list_files(root, folder, recursive=True, limit=3)
    assert caught.value.status == 413


def test_sorted_copies_never_overwrite(tmp_path):
    copier = SortedCopier(tmp_path / "sorted")
    assert copier.copy(b"1", "face.jpg", "fake") == "fake/face.jpg"
    assert copier.copy(b"2", "dir/face.jpg", "fake") == "fake/face-1.jpg"
    assert copier.copy(b"3", "face.jpg", "real") == "real/face.jpg"
    assert copier.copy(b"4", "face.jpg", "uncertain") == "uncertain/face.jpg"
    assert [(tmp_path / "sorted" / name).read_bytes() for name in ("fake/face.jpg", "fake/face-1.jpg", "real/face.jpg", "uncertain/face.jpg")] == [
        b"1", b"2", b"3", b"4"]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sorted2").mkdir()
    (tmp_path / "sorted2" / "real").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ServiceError) as refused:
        SortedCopier(tmp_path / "sorted2").copy(b"x", "a.jpg", "real")
    assert (refused.value.status, refused.value.reason) == (403, "path_outside_root")
    assert not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize(("given", "expected"), [("../../etc/passwd", "passwd"), ("..", "upload"), ("a b?.jpg", "a_b_.jpg"),
                                                 ("C:\\x\\y.png", "y.png"), (".hidden", "hidden"), ("", "upload")])
def test_safe_name(given, expected):
    assert safe_name(given) == expected


def test_parse_bool():
    assert [parse_bool(v, "x") for v in ("true", "1", "Yes", "on", None, "", "false", "0", "off")] == [True] * 4 + [False] * 5
    with pytest.raises(ServiceError) as caught:
        parse_bool("perhaps", "x")
    assert caught.value.status == 422 and caught.value.reason == "bad_field"


def _result(file: str, verdict: str, faces: bool) -> ImageResult:
    model = ModelInfo(name="m", version="1", architecture="a", threshold=0.5)
    return ImageResult(file=file, verdict=verdict, fake_probability=0.9 if verdict == "fake" else 0.1, face_found=faces,
                       faces=[], whole_image=None, model=model, timings_ms={})


def test_batch_summary_and_csv():
    items = [BatchItem(file="a", ok=True, result=_result("a", "fake", True), sorted_to="fake/a"),
             BatchItem(file="b", ok=True, result=_result("b", "real", False)),
             BatchItem(file="c", ok=False, error=FileError(file="c", status=400, error="bad", reason="corrupt"))]
    answer = batch_result(items, with_csv=True)
    assert answer.summary.model_dump() == {"files": 3, "real": 1, "fake": 1, "uncertain": 0, "no_face": 1, "errors": 1}
    rows = list(csv.DictReader(io.StringIO(answer.csv)))
    assert [(r["file"], r["ok"], r["verdict"], r["sorted_to"], r["reason"]) for r in rows] == [
        ("a", "True", "fake", "fake/a", ""), ("b", "True", "real", "", ""), ("c", "False", "", "", "corrupt")]
    items.append(BatchItem(file="d", ok=True, result=_result("d", "uncertain", False), sorted_to="uncertain/d"))
    answer = batch_result(items, with_csv=True)
    assert answer.summary.model_dump() == {"files": 4, "real": 1, "fake": 1, "uncertain": 1, "no_face": 2, "errors": 1}
    assert list(csv.DictReader(io.StringIO(answer.csv)))[3]["verdict"] == "uncertain"
    assert batch_result(items).csv is None


class _NoFaces:
    def detect(self, image):
        return []


def _engine(classify) -> Engine:
    settings = get_settings()
    pipeline = Pipeline(uncalibrated_card(), _NoFaces(), (-15.0, 0.0, 15.0))
    return Engine(pipeline, classify, settings.max_bytes, settings.max_pixels, get_metrics())


def _classifier_failures() -> list:
    from http import HTTPStatus

    import aiohttp
    from bentoml.exceptions import BentoMLException, ServiceUnavailable

    return [
        (ServiceUnavailable("process is overloaded"), "overloaded", "1"),
        (aiohttp.ServerDisconnectedError(), "classifier_unavailable", "5"),  # on every try
        (aiohttp.ClientPayloadError("Response payload is not completed"), "classifier_unavailable", "5"),
        (asyncio.TimeoutError(), "classifier_timeout", "5"),
        (BentoMLException("Not able to process the request in 60 seconds", error_code=HTTPStatus.GATEWAY_TIMEOUT), "classifier_timeout", "5"),
    ]


@pytest.mark.parametrize(("failure", "reason", "retry_after"), _classifier_failures(), ids=lambda value: type(value).__name__)
def test_engine_maps_the_classifiers_refusals_to_503_with_retry_after(failure, reason, retry_after):
    async def failing(crops: np.ndarray) -> np.ndarray:
        raise failure

    with pytest.raises(ServiceError) as caught:
        asyncio.run(_engine(failing).classify_bytes(encode(gradient(), "PNG"), "ramp.png"))
    assert (caught.value.status, caught.value.reason, caught.value.headers) == (503, reason, {"Retry-After": retry_after})


def test_a_classifier_bug_stays_a_500():
    from bentoml.exceptions import BentoMLException

    async def broken(crops: np.ndarray) -> np.ndarray:
        raise BentoMLException("predict raised ValueError")

    with pytest.raises(BentoMLException):
        asyncio.run(_engine(broken).classify_bytes(encode(gradient(), "PNG"), "ramp.png"))


def test_engine_batch_keeps_order_and_per_file_errors():
    seen = []

    async def fixed(crops: np.ndarray) -> np.ndarray:
        seen.append(len(crops))
        return np.full(len(crops), 0.99, dtype=np.float32)

    def unreadable() -> bytes:
        raise ServiceError("gone", 403, "file_unreadable")

    sources = [Source("a.png", lambda: encode(gradient(), "PNG")), Source("b", unreadable), Source("c", lambda: b"junk")]
    items = asyncio.run(_engine(fixed).classify_sources(sources))
    assert [(i.file, i.ok) for i in items] == [("a.png", True), ("b", False), ("c", False)]
    assert items[0].result.fake_probability == pytest.approx(0.99) and items[0].result.verdict == "fake"
    assert [i.error.status for i in items[1:]] == [403, 400]
    assert seen == [3]  # one image, three TTA crops, in one call


def test_detector_device_follows_the_device_setting():
    from service.faces import detector_device
    from service.onnx_model import cuda_present

    assert detector_device("cpu") == "cpu"
    assert detector_device("auto") == ("cuda" if cuda_present() else "cpu")
    if not cuda_present():
        with pytest.raises(RuntimeError):
            detector_device("cuda")


def test_cuda_present_agrees_with_torch():
    """The service asks the CUDA driver directly (no torch in its workers); torch must see the same."""
    import torch

    from service.onnx_model import cuda_present

    assert cuda_present() == torch.cuda.is_available()


def test_classifier_threads_share_the_cores_with_the_api_workers(monkeypatch):
    import os

    from service.config import Settings

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("FACECHECK_BATCH_SIZE", "1")  # the classifier in each API worker: the cores split between them
    assert Settings(api_workers=2).inline_classifier
    assert Settings(api_workers=2).classifier_cpu_threads == max(1, cores // 2)
    assert Settings(api_workers=cores + 3).classifier_cpu_threads == 1
    assert Settings(api_workers=2, classifier_threads=5).classifier_cpu_threads == 5
    # unbatched calls side by side in a worker: never more ONNX Runtime threads than its share of the cores, at least one call
    assert Settings(api_workers=1, classifier_threads=1).classifier_calls_at_once == cores
    assert Settings(api_workers=2, classifier_threads=cores).classifier_calls_at_once == 1
    assert Settings(api_workers=2, classifier_threads=cores + 5).classifier_calls_at_once == 1
    monkeypatch.setenv("FACECHECK_BATCH_SIZE", "64")  # a Classifier service: the cores the API workers leave
    assert not Settings(api_workers=2).inline_classifier
    assert Settings(api_workers=2).classifier_cpu_threads == max(1, cores - 2)
    assert Settings(api_workers=cores + 3).classifier_cpu_threads == 1


def test_adaptive_batching_defaults_to_on_with_cuda_and_off_on_cpu(monkeypatch):
    import onnxruntime

    from service import onnx_model
    from service.config import Settings

    monkeypatch.setenv("FACECHECK_BATCH_SIZE", "auto")
    monkeypatch.setenv("FACECHECK_DEVICE", "auto")  # gpu_check.sh runs the tests with FACECHECK_DEVICE=cuda
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for cuda, expected in ((True, 64), (False, 1)):
        monkeypatch.setattr(onnx_model, "cuda_present", lambda cuda=cuda: cuda)
        assert Settings().adaptive_batch_size == expected
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])  # a GPU, but a CPU-only onnxruntime
    assert Settings().adaptive_batch_size == 1
    assert Settings(device="cpu").adaptive_batch_size == 1  # the classifier stays on CPU whatever the machine
    monkeypatch.setenv("FACECHECK_BATCH_SIZE", "16")
    assert Settings(device="cpu").adaptive_batch_size == 16
    monkeypatch.setenv("FACECHECK_BATCH_SIZE", "0")
    with pytest.raises(ValueError):
        Settings()


def test_admission_refuses_a_call_that_waits_past_its_budget():
    from bentoml.exceptions import ServiceUnavailable

    from service.admission import Admission

    async def scenario() -> list[str]:
        admission = Admission(limit=1, budget_s=0.05)
        events = []
        async with admission.slot():
            with pytest.raises(ServiceUnavailable, match="within 50 ms"):
                async with admission.slot():
                    events.append("second ran while the first held the only slot")
        async with admission.slot():  # the slot was given back, and the refused call took none
            events.append("third")

        async def hold(name: str) -> None:
            async with admission.slot():
                await asyncio.sleep(0.01)
                events.append(name)

        await asyncio.gather(hold("a"), hold("b"), hold("c"))  # each waits 10-20 ms for its turn: within budget
        return events

    assert asyncio.run(scenario()) == ["third", "a", "b", "c"]


def test_classifier_times_out_sooner_than_the_api():
    """BentoML keeps each request's context until its timeout timer fires (docs/reliability.md): the
    Classifier, which answers a call per photo, must not hold five minutes of them."""
    from service.config import get_settings
    from service.gate import Deadline
    from service.service import TIMEOUT_BACKSTOP_S, Classifier, FaceCheck

    timeout_s = get_settings().request_timeout_s
    assert Classifier.config["traffic"]["timeout"] == min(60, timeout_s)
    assert (Deadline, {"timeout_s": timeout_s}) in FaceCheck.middlewares  # our 504, before BentoML's backstop
    assert FaceCheck.config["traffic"]["timeout"] == timeout_s + TIMEOUT_BACKSTOP_S


def test_to_input_normalises_each_channel_into_nchw():
    from PIL import Image

    from service.preprocess import PreprocessSpec, to_input

    spec = PreprocessSpec(input_size=16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    crops = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    batch = to_input(crops, spec)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32 and batch.flags.c_contiguous
    by_hand = (crops.transpose(0, 3, 1, 2) / 255.0 - np.reshape(spec.mean, (1, 3, 1, 1))) / np.reshape(spec.std, (1, 3, 1, 1))
    np.testing.assert_allclose(batch, by_hand, atol=1e-6)
    assert batch[1, 2, 3, 0] == pytest.approx(crops[1, 3, 0, 2] / 255.0, abs=1e-6)  # mean 0, std 1: just x / 255
    np.testing.assert_array_equal(to_input([Image.fromarray(crop) for crop in crops], spec), batch)


def test_keys_from_the_environment_and_a_file_of_hashes(tmp_path):
    import hashlib

    from service.config import Settings
    from service.keys import ApiKeys, KeysError

    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops team\nsha256:{hashlib.sha256(b'from-the-file').hexdigest().upper()}\n\n")
    keys = ApiKeys.from_settings(Settings(api_keys=" one-key , two-key,", api_keys_file=keys_file))
    assert keys.required and len(keys.hashes) == 3
    assert keys.identify("one-key") == hashlib.sha256(b"one-key").hexdigest()[:12]
    assert keys.identify("from-the-file") and keys.identify("two-key")
    assert keys.identify("one-ke") is None and keys.identify(None) is None and keys.identify("sha256:" + "0" * 64) is None
    assert not ApiKeys.from_settings(Settings(api_keys="")).required  # FACECHECK_API_KEYS= is no keys, as unset

    keys_file.write_text("sha256:not-hex-secret-ish\n")
    with pytest.raises(KeysError, match="entry 1") as bad:
        ApiKeys.from_settings(Settings(api_keys_file=keys_file))
    assert "not-hex-secret-ish" not in str(bad.value)  # an error never repeats what might be a key
    keys_file.write_text("# nobody yet\n")
    with pytest.raises(KeysError, match="holds no key"):
        ApiKeys.from_settings(Settings(api_keys_file=keys_file))


@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": "Bearer abc"}, "abc"), ({"authorization": "bearer  abc "}, "abc"), ({"x-api-key": "xyz"}, "xyz"),
    ({"authorization": "Basic abc", "x-api-key": "xyz"}, "xyz"), ({"authorization": "Bearer "}, None), ({}, None),
])
def test_presented_key(headers, key):
    from service.keys import presented_key

    assert presented_key(headers) == key


def test_the_rate_is_one_bucket_per_key_whichever_worker_asks(tmp_path):
    """Two limiters on one file, as two API workers have: together they let a key through RATE times a minute."""
    from service.limits import RateLimiter

    path = tmp_path / "rates.sqlite"
    first, second = RateLimiter(3, path), RateLimiter(3, path)
    assert [first.take("a"), second.take("a"), first.take("a")] == [0, 0, 0]
    wait = second.take("a")
    assert 1 <= wait <= 20  # a token every 20 s
    assert first.take("b") == 0


def test_in_flight_refuses_past_its_limit():
    from service.limits import InFlight

    cap = InFlight(1)
    with cap.slot() as first:
        with cap.slot() as second:
            assert (first, second) == (True, False)
    with cap.slot() as again:
        assert again and cap.count == 1
    assert cap.count == 0


def test_an_exception_escaping_the_app_is_a_json_500():
    """service.gate.JsonErrors, around an app that fails before answering, and one that answers 404 in plain text."""
    import asyncio

    import httpx
    from starlette.routing import Route, Router

    from service.gate import JsonErrors

    async def broken(_):
        raise RuntimeError("a bug")

    app = JsonErrors(Router(routes=[Route("/broken", broken)]))  # a bare router, as BentoML's app is inside its own middlewares

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test") as client:
            return await client.get(path)

    broken_answer, missing = asyncio.run(get("/broken")), asyncio.run(get("/nothing"))
    assert (broken_answer.status_code, broken_answer.json()) == (500, {"error": "the server failed to answer; see its log", "status": 500,
                                                                       "reason": "internal_server_error"})
    assert (missing.status_code, missing.json()["reason"], missing.headers["content-type"]) == (404, "not_found", "application/json")


def test_cuda_sessions_choose_cudnn_algorithms_by_heuristic():
    from service.onnx_model import with_options

    assert with_options(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    assert with_options(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def _framed_face(size: tuple[int, int]) -> Image.Image:
    """A grey photo with a bright square 'face' near its top-left corner."""
    photo = Image.new("RGB", size, (120, 120, 120))
    photo.paste((250, 200, 180), (10, 10, 90, 90))
    return photo


def test_edges_black_pads_a_square_past_the_photo_and_fit_keeps_it_inside():
    from service.preprocess import PreprocessSpec, crop_face

    photo = _framed_face((200, 150))
    box = (10, 10, 90, 90)  # its square at margin 0.3 reaches 14 px past the top and left edges
    black = np.asarray(crop_face(photo, box, PreprocessSpec(input_size=64)))
    fit = np.asarray(crop_face(photo, box, PreprocessSpec(input_size=64, edges="fit")))
    assert black[0, 0].tolist() == [0, 0, 0]
    assert fit.min() >= 100  # no black: only the photo's grey and the face


def test_edges_fit_shrinks_a_square_larger_than_the_photo_to_its_shorter_side():
    from service.preprocess import fitted

    assert fitted((-40, -30, 160, 170), 120, 100) == (10, 0, 110, 100)  # 200 px about (60, 70): 100 px about it, moved up inside
    assert fitted((10, 10, 50, 50), 120, 100) == (10, 10, 50, 50)       # inside already: unchanged
    assert fitted((100, 80, 140, 120), 120, 100) == (80, 60, 120, 100)   # past the bottom right: moved in


def test_the_edge_policy_is_part_of_the_cache_key_only_where_it_is_not_the_old_one():
    from service.preprocess import PreprocessSpec

    assert PreprocessSpec().cache_key() == "face-128-0.300-bicubic"
    assert PreprocessSpec(edges="fit").cache_key() == "face-128-0.300-bicubic-fit"


def test_formats_setting_takes_common_names_and_refuses_unknown_ones():
    from pydantic import ValidationError

    from service.config import Settings
    from service.imaging import FORMATS

    assert Settings().formats == Settings(formats="all").formats == FORMATS
    assert Settings(formats="jpg, HEIC,png,jpeg").formats == ("JPEG", "HEIF", "PNG")
    for bad in ("psd", " , "):
        with pytest.raises(ValidationError, match="FACECHECK_FORMATS: "):
            Settings(formats=bad)
