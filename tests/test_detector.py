"""The service's MTCNN (service.mtcnn: NumPy + ONNX Runtime) against facenet-pytorch's, which it replaces."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from loadtests.detection_agreement import matches
from service.faces import DetectorSettings, Face, FaceDetector
from service.mtcnn import NETS_DIR, OnnxMTCNN, pyramid_scales, resample_image, resample_regions, summed_area_table
from service_fixtures import mosaic, shared_images, synthetic_face


@pytest.fixture(scope="module")
def facenet() -> FaceDetector:
    return FaceDetector(DetectorSettings(backend="facenet"))


@pytest.fixture(scope="module")
def onnx_detector() -> FaceDetector:
    return FaceDetector(DetectorSettings(min_face_fraction=0.1))  # the service's default


def area(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """facenet-pytorch's resampling: torch's interpolate(mode="area") on float pixels."""
    tensor = torch.as_tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(tensor, size=size, mode="area")[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape,size", [((400, 400), (241, 241)), ((97, 131), (13, 12)), ((30, 40), (48, 48)), ((640, 480), (385, 289))])
def test_whole_image_resampling_equals_torch_area_interpolation(shape: tuple[int, int], size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = resample_image(summed_area_table(pixels), *size)
    np.testing.assert_allclose(ours, area(pixels, size), atol=1e-4)


def test_region_resampling_equals_torch_on_each_crop() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    regions = np.array([[0, 0, 90, 120], [10, 5, 40, 35], [3, 60, 13, 117], [80, 100, 90, 104]])
    ours = resample_regions(summed_area_table(pixels), regions, 24)
    for crop, (left, top, right, bottom) in zip(ours, regions):
        np.testing.assert_allclose(crop, area(pixels[top:bottom, left:right], (24, 24)), atol=1e-4)


def test_summed_area_table_is_exact_past_int32() -> None:
    small = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    expected = np.zeros((38, 54, 3), np.int64)
    expected[1:, 1:] = small.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    assert summed_area_table(small).dtype == np.int32 and (summed_area_table(small) == expected).all()
    white = np.full((3000, 2900, 3), 255, np.uint8)  # sums beyond 2**31
    table = summed_area_table(white)
    assert table[-1, -1, 0] == 255 * 3000 * 2900 and table[1500, 100, 2] == 255 * 1500 * 100


def test_pyramid_stops_at_pnets_window() -> None:
    scales = pyramid_scales(400, 300, 20)
    assert scales[0] == pytest.approx(12 / 20)
    assert 300 * scales[-1] >= 12 > 300 * scales[-1] * 0.709
    assert len(pyramid_scales(400, 300, 40)) < len(scales)


def test_exported_networks_compute_what_facenet_pytorchs_do() -> None:
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    rng = np.random.default_rng(2)
    for name, net, shape in (("pnet", PNet(), (1, 3, 71, 53)), ("rnet", RNet(), (9, 3, 24, 24)), ("onet", ONet(), (4, 3, 48, 48))):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        session = ort.InferenceSession(str(NETS_DIR / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = net.eval()(torch.from_numpy(x))
        for ours, theirs in zip(session.run(None, {"x": x}), expected):
            np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)


def assert_same_faces(ours: list[Face], theirs: list[Face]) -> None:
    assert len(ours) == len(theirs)
    assert matches(theirs, ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.score == pytest.approx(b.score, abs=1e-3)


def test_drawn_faces_and_mosaics_match_facenet(facenet: FaceDetector, onnx_detector: FaceDetector) -> None:
    images = [synthetic_face(256, seed) for seed in range(3)] + [mosaic([synthetic_face(128, s) for s in range(5)], 96), synthetic_face(700, 4)]
    for image in images:
        theirs = facenet.detect(image)
        assert theirs, "the reference found no face: the fixture is broken"
        assert_same_faces(onnx_detector.detect(image), theirs)


def test_no_face_and_tiny_images(onnx_detector: FaceDetector) -> None:
    assert onnx_detector.detect(Image.new("RGB", (300, 200), (0, 0, 0))) == []
    assert onnx_detector.detect(Image.new("RGB", (11, 50), (200, 150, 120))) == []
    assert OnnxMTCNN().detect(Image.new("RGB", (12, 12), (90, 90, 90)))[0].shape == (0, 4)


def test_real_photos_match_facenet(facenet: FaceDetector, onnx_detector: FaceDetector) -> None:
    files = shared_images("rff/fake", 6) + shared_images("utk-real/real", 6) + shared_images("tpdne128/fake", 6)
    for path in files:
        image = Image.open(path).convert("RGB")
        assert_same_faces(onnx_detector.detect(image), facenet.detect(image))


def test_min_face_fraction_trades_small_faces_for_speed() -> None:
    big = synthetic_face(400, 5)
    small = Image.new("RGB", (800, 800), (70, 90, 120))
    small.paste(synthetic_face(100, 6), (350, 350))  # a face of about 60 px
    everything = FaceDetector(DetectorSettings(min_face_fraction=0.0))
    coarse = FaceDetector(DetectorSettings(min_face_fraction=0.25))  # faces of 100 px and up on 400 px, 200 px on 800 px
    assert coarse.detect(big) == everything.detect(big) and len(coarse.detect(big)) == 1  # the same levels find it
    assert len(everything.detect(small)) == 1
    assert coarse.detect(small) == []
    assert DetectorSettings(min_face_fraction=0.1).smallest_face(1000, 400) == 40


def test_min_face_fraction_drops_only_the_finest_pyramid_levels() -> None:
    full = pyramid_scales(400, 400, 20.0)
    coarse = pyramid_scales(400, 400, 20.0, smallest_face=40.0)
    assert full[-len(coarse):] == coarse and len(coarse) < len(full)
    assert 12 / coarse[0] >= 40 * 0.709 > 12 / full[len(full) - len(coarse) - 1]  # one level below 40 px is kept


def test_facenet_backend_refuses_min_face_fraction() -> None:
    with pytest.raises(ValueError, match="onnx backend"):
        DetectorSettings(backend="facenet", min_face_fraction=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the CUDA path of the detector and classifier")
def test_cuda_path_matches_cpu() -> None:
    from service.config import get_settings
    from service.onnx_model import OnnxClassifier, read_card

    image = synthetic_face(320, 7)
    cpu, cuda = FaceDetector(DetectorSettings(), "cpu"), FaceDetector(DetectorSettings(), "cuda")
    assert_same_faces(cuda.detect(image), cpu.detect(image))
    on_gpu = OnnxClassifier(get_settings().model, "cuda")
    assert on_gpu.provider == "CUDAExecutionProvider"
    size = read_card(get_settings().model).preprocess.input_size
    crops = np.random.default_rng(3).standard_normal((5, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(on_gpu.predict(crops), OnnxClassifier(get_settings().model, "cpu").predict(crops), atol=1e-3)
