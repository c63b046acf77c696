"""Re-processing chains: parsed from their names, applied in order, refused with a clear reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training.chains import ROBUSTNESS_CHAINS, ChainError, parse_chain, reencode_chain


@pytest.fixture
def photo() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (120, 80, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_scale_and_side_keep_the_aspect_ratio(photo: Image.Image) -> None:
    assert parse_chain("x0.5")(photo).size == (40, 60)
    assert parse_chain("x4")(photo).size == (320, 480)
    assert parse_chain("256px")(photo).size == (171, 256)
    assert parse_chain("x0.5>x2")(photo).size == photo.size


def test_jpeg_step_is_a_real_jpeg_round_trip(photo: Image.Image) -> None:
    out = parse_chain("jpeg60")(photo)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=60)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_steps_run_left_to_right(photo: Image.Image) -> None:
    assert np.asarray(parse_chain("x0.5>jpeg75")(photo)).shape == (60, 40, 3)
    assert np.asarray(parse_chain("jpeg75>x0.5")(photo)).shape == (60, 40, 3)
    assert not np.array_equal(np.asarray(parse_chain("x0.5>jpeg75")(photo)), np.asarray(parse_chain("jpeg75>x0.5")(photo)))


def test_blur_smooths(photo: Image.Image) -> None:
    detail = lambda image: np.abs(np.diff(np.asarray(image).astype(float), axis=1)).mean()  # noqa: E731
    assert detail(parse_chain("blur1")(photo)) < 0.6 * detail(photo)


def test_webp_step_is_a_real_webp_round_trip(photo: Image.Image) -> None:
    buffer = io.BytesIO()
    photo.save(buffer, format="WEBP", quality=75)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(parse_chain("webp75")(photo)), expected)


def test_avif_step_is_a_real_avif_round_trip(photo: Image.Image) -> None:
    buffer = io.BytesIO()
    photo.save(buffer, format="AVIF", quality=60)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(parse_chain("avif60")(photo)), expected)
    assert not np.array_equal(expected, np.asarray(photo.convert("RGB")))


def test_sharpen_adds_contrast_at_edges() -> None:
    ramp = np.repeat(np.repeat(np.linspace(60, 200, 32, dtype=np.uint8)[None, :, None], 32, axis=0), 3, axis=2)
    ramp[:, 16:] = 200
    ramp[:, :16] = 60
    sharpened = np.asarray(parse_chain("sharpen150")(Image.fromarray(ramp))).astype(int)
    assert sharpened[:, 15].mean() < 60 and sharpened[:, 16].mean() > 200  # overshoot on both sides of the edge
    np.testing.assert_array_equal(sharpened[:, :8], 60)  # flat areas stay as they were


def test_gray_is_the_luma_in_three_equal_channels(photo: Image.Image) -> None:
    out = np.asarray(parse_chain("gray")(photo))
    assert out.shape == (120, 80, 3)
    np.testing.assert_array_equal(out[..., 0], np.asarray(photo.convert("L")))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_noise_has_the_asked_spread_and_repeats() -> None:
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    once = np.asarray(parse_chain("noise8")(flat)).astype(float)
    assert 7.5 < once.std() < 8.5 and abs(once.mean() - 128) < 0.5
    np.testing.assert_array_equal(once, np.asarray(parse_chain("noise8")(flat)))


def _skin_with_an_edge() -> Image.Image:
    """A noisy flat patch (skin's fine texture) beside a darker one: a beauty filter flattens each, keeps the edge."""
    pixels = np.random.default_rng(1).normal(150, 6, (64, 64, 3))
    pixels[:, 32:] -= 100
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_smooth_flattens_texture_and_keeps_edges() -> None:
    skin = _skin_with_an_edge()
    before, after = np.asarray(skin).astype(float), np.asarray(parse_chain("smooth40")(skin)).astype(float)
    assert after[:, 4:28].std() < before[:, 4:28].std() / 2  # the texture on each side is flattened

    def step(pixels: np.ndarray) -> float:
        return float(pixels[:, 31].mean() - pixels[:, 32].mean())

    blurred = np.asarray(parse_chain("blur2")(skin)).astype(float)
    assert step(after) > 90 and step(blurred) < 60  # the edge stays as sharp as it was, where a blur spreads it


def test_reencode_chain_is_resize_then_jpeg(photo: Image.Image) -> None:
    assert reencode_chain(256, 85).name == "256px>jpeg85"
    assert [s.kind for s in reencode_chain(256, 85).steps] == ["side", "jpeg"]


@pytest.mark.parametrize("text", ["", "x", "jpeg101", "jpeg0", "x0", "x9", "300dpi", "x0.5>>x2", "blur0", "webp0", "webp101", "avif0", "avif101", "sharpen0", "sharpen999", "sharpen",
                                  "gray1", "grey", "noise", "noise0", "noise65", "smooth", "smooth0", "smooth256", "smooth1.5"])
def test_bad_chains_are_refused_with_the_failing_step(text: str) -> None:
    with pytest.raises(ChainError, match="chain"):
        parse_chain(text)


def test_every_shipped_chain_parses() -> None:
    assert [parse_chain(text).name for text in ROBUSTNESS_CHAINS] == list(ROBUSTNESS_CHAINS)


def test_crop_keeps_the_centre_fraction_of_each_side() -> None:
    photo = Image.new("RGB", (400, 300), (0, 0, 0))
    photo.paste((255, 255, 255), (60, 45, 340, 255))  # the centre 0.7 of each side, white
    cropped = parse_chain("crop0.7")(photo)
    assert cropped.size == (280, 210)
    assert np.asarray(cropped).min() == 255


@pytest.mark.parametrize("text", ["crop1", "crop0.05", "crop2"])
def test_crop_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(ChainError):
        parse_chain(text)


def test_vivid_saturates_and_stretches_contrast() -> None:
    photo = Image.fromarray(np.array([[[150, 110, 90], [60, 70, 80]]], dtype=np.uint8))
    before, after = np.asarray(photo).astype(float), np.asarray(parse_chain("vivid140")(photo)).astype(float)
    assert np.ptp(after[0, 0]) > np.ptp(before[0, 0])  # the skin tone's channels further apart: more saturated
    assert abs(after[0, 0].mean() - after[0, 1].mean()) > abs(before[0, 0].mean() - before[0, 1].mean())
    assert np.array_equal(np.asarray(parse_chain("vivid100")(photo)), np.asarray(photo))


def test_warm_raises_red_lowers_blue_and_keeps_green() -> None:
    photo = Image.new("RGB", (4, 4), (100, 120, 140))
    assert np.asarray(parse_chain("warm15")(photo))[0, 0].tolist() == [115, 120, 119]


def test_gamma_darkens_above_one_and_lightens_below() -> None:
    photo = Image.new("RGB", (4, 4), (128, 128, 128))
    darker, lighter = (int(np.asarray(parse_chain(text)(photo))[0, 0, 0]) for text in ("gamma150", "gamma67"))
    assert darker == round(255 * (128 / 255) ** 1.5) and lighter == round(255 * (128 / 255) ** 0.67)
    assert darker < 128 < lighter
    white = Image.new("RGB", (2, 2), (255, 255, 255))
    assert np.asarray(parse_chain("gamma150")(white)).min() == 255


@pytest.mark.parametrize("text", ["vivid", "vivid5", "vivid400", "warm0", "warm60", "gamma10", "gamma500", "vivid1.4"])
def test_colour_steps_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(ChainError):
        parse_chain(text)


@pytest.mark.parametrize(("text", "colour"), [("pad25", (255, 255, 255)), ("padblack10", (0, 0, 0))])
def test_pad_centres_the_photo_on_a_canvas_of_one_colour(text: str, colour: tuple[int, int, int]) -> None:
    photo = Image.new("RGB", (100, 80), (200, 30, 40))
    border = round(100 * int(text.removeprefix("padblack").removeprefix("pad")) / 100)
    padded = parse_chain(text)(photo)
    assert padded.size == (100 + 2 * border, 80 + 2 * border)
    assert padded.getpixel((0, 0)) == colour and padded.getpixel((padded.width - 1, padded.height - 1)) == colour
    assert np.array_equal(np.asarray(padded.crop((border, border, border + 100, border + 80))), np.asarray(photo))


@pytest.mark.parametrize("text", ["pad0", "pad101", "padblack0"])
def test_pad_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(ChainError, match="out of range"):
        parse_chain(text)


def test_circle_is_the_centre_square_white_outside_its_circle() -> None:
    photo = Image.new("RGB", (120, 80), (200, 30, 40))
    photo.paste((10, 200, 10), (0, 0, 20, 80))  # a green strip the centre square leaves out
    avatar = parse_chain("circle")(photo)
    assert avatar.size == (80, 80)
    assert avatar.getpixel((0, 0)) == (255, 255, 255) and avatar.getpixel((79, 79)) == (255, 255, 255)
    assert avatar.getpixel((40, 40)) == (200, 30, 40) and avatar.getpixel((40, 1)) == (200, 30, 40)
    assert (10, 200, 10) not in {colour for _, colour in avatar.getcolors(maxcolors=1 << 16)}


def test_rot_turns_the_photo_counter_clockwise_without_resampling() -> None:
    photo = Image.new("RGB", (30, 20), (0, 0, 0))
    photo.putpixel((29, 0), (255, 0, 0))  # the top right corner
    turned = {text: parse_chain(text)(photo) for text in ("rot90", "rot180", "rot270")}
    assert turned["rot90"].size == (20, 30) and turned["rot90"].getpixel((0, 0)) == (255, 0, 0)
    assert turned["rot180"].size == (30, 20) and turned["rot180"].getpixel((0, 19)) == (255, 0, 0)
    assert turned["rot270"].size == (20, 30) and turned["rot270"].getpixel((19, 29)) == (255, 0, 0)


@pytest.mark.parametrize("text", ["rot45", "rot0", "circle2"])
def test_rot_and_circle_refuse_what_they_do_not_do(text: str) -> None:
    with pytest.raises(ChainError, match="unknown step"):
        parse_chain(text)
