"""Training augmentation: shapes kept, and the degradation chain really lowers detail the way a photo's path does."""
from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

from training.augment import AugmentSpec, _degrade, augment, augment_pair

NONE = AugmentSpec(flip=0, rotation=0, lighting=0, blur=0, resize=0, jpeg=0)


def _checkerboard(size: int = 64) -> np.ndarray:
    tile = (np.indices((size, size)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return np.repeat(tile[..., None], 3, axis=2)


def _detail(pixels: np.ndarray) -> float:
    """Mean absolute difference between neighbours: what down-scaling and JPEG take away."""
    grey = pixels.astype(float).mean(axis=2)
    return float(np.abs(np.diff(grey, axis=1)).mean())


def test_nothing_asked_returns_the_crop_unchanged() -> None:
    crop = _checkerboard()
    np.testing.assert_array_equal(augment(crop, NONE, random.Random(0)), crop)


def test_every_augmentation_keeps_shape_and_dtype() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    spec = AugmentSpec(flip=1, rotation=20, lighting=0.3, blur=1, resize=1, min_scale=0.2, jpeg=1)
    for seed in range(20):
        out = augment(crop, spec, random.Random(seed))
        assert out.shape == crop.shape and out.dtype == np.uint8


def test_down_scaling_and_jpeg_remove_fine_detail() -> None:
    image = Image.fromarray(_checkerboard())
    rng = random.Random(0)
    sharp = _detail(np.asarray(image))
    down_up = _detail(np.asarray(_degrade(image, 0.3, None, rng)))
    with_jpeg = _degrade(image, 0.3, 50, rng)
    assert with_jpeg.size == image.size
    assert down_up < 0.5 * sharp
    assert _detail(np.asarray(_degrade(image, 1.0, 50, rng))) < sharp


def test_resize_scales_cover_the_asked_range() -> None:
    crop = _checkerboard(100)
    spec = NONE.model_copy(update={"resize": 1.0, "min_scale": 0.25})
    details = [_detail(augment(crop, spec, random.Random(seed))) for seed in range(40)]
    assert min(details) < 0.3 * _detail(crop)  # some draws go down near a quarter of the size
    assert max(details) > 0.6 * _detail(crop)  # and some stay near full size


def test_a_pair_shares_its_look_and_only_the_second_view_is_always_degraded() -> None:
    crop = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    crop[:, :32] = 0  # left half dark: a flip is visible
    spec = NONE.model_copy(update={"flip": 1.0})
    for seed in range(10):
        first, second = augment_pair(crop, spec, random.Random(seed))
        assert first.shape == second.shape == crop.shape and second.dtype == np.uint8
        np.testing.assert_array_equal(first, crop[:, ::-1])  # no degradation asked: the flipped crop itself
        assert second[:, 32:].mean() < 40 < second[:, :32].mean()  # flipped too, the same look
        assert np.abs(second.astype(int) - first).mean() > 1  # and always scaled and re-saved


def test_a_pair_keeps_the_usual_augmentation_for_its_first_view() -> None:
    crop = _checkerboard()
    spec = NONE.model_copy(update={"resize": 1.0, "min_scale": 0.25})
    first, _ = augment_pair(crop, spec, random.Random(0))
    assert _detail(first) < _detail(crop)


def test_sharpening_adds_detail_and_is_drawn_only_where_no_blur_was() -> None:
    crop = np.asarray(Image.fromarray(_checkerboard(16)).resize((64, 64), Image.Resampling.NEAREST).filter(ImageFilter.GaussianBlur(1.0)))
    sharpen = NONE.model_copy(update={"sharpen": 1.0})
    assert all(_detail(augment(crop, sharpen, random.Random(seed))) > 1.1 * _detail(crop) for seed in range(10))
    blur_first = NONE.model_copy(update={"blur": 1.0, "sharpen": 1.0})
    assert all(_detail(augment(crop, blur_first, random.Random(seed))) <= _detail(crop) for seed in range(10))



def test_black_and_white_is_drawn_at_its_rate() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gray = NONE.model_copy(update={"gray": 1.0})
    out = augment(crop, gray, random.Random(0))
    np.testing.assert_array_equal(out[..., 0], np.asarray(Image.fromarray(crop).convert("L")))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    some = NONE.model_copy(update={"gray": 0.3})
    outs = [augment(crop, some, random.Random(seed)) for seed in range(400)]
    assert 80 < sum(bool((out[..., 0] == out[..., 2]).all()) for out in outs) < 160


def test_noise_is_drawn_at_its_rate_with_the_asked_spread() -> None:
    flat = np.full((48, 48, 3), 128, dtype=np.uint8)
    always = NONE.model_copy(update={"noise": 1.0})
    spreads = [augment(flat, always, random.Random(seed)).astype(float).std() for seed in range(20)]
    assert all(1.5 < s < 13.0 for s in spreads) and max(spreads) - min(spreads) > 3  # sigma drawn in 2-12, per crop
    assert not augment(flat, NONE, random.Random(0)).std()
    some = NONE.model_copy(update={"noise": 0.3})
    outs = [augment(flat, some, random.Random(seed)) for seed in range(400)]
    assert 80 < sum(bool(out.std()) for out in outs) < 160


def test_beauty_filter_is_drawn_at_its_rate_and_flattens_texture() -> None:
    skin = np.clip(np.random.default_rng(2).normal(150, 6, (48, 48, 3)), 0, 255).astype(np.uint8)
    always = NONE.model_copy(update={"smooth": 1.0})
    assert all(augment(skin, always, random.Random(seed)).astype(float).std() < skin.std() / 1.5 for seed in range(10))
    np.testing.assert_array_equal(augment(skin, NONE, random.Random(0)), skin)
    some = NONE.model_copy(update={"smooth": 0.3})
    outs = [augment(skin, some, random.Random(seed)) for seed in range(300)]
    assert 60 < sum(not np.array_equal(out, skin) for out in outs) < 120


def _black_share(pixels: np.ndarray) -> float:
    return float((pixels.max(axis=2) == 0).mean())


def test_a_tighter_framing_with_black_edges_blacks_out_bands_at_the_sides_only() -> None:
    crop = np.full((100, 100, 3), 180, dtype=np.uint8)
    frame = NONE.model_copy(update={"frame": 1.0})
    for seed in range(30):
        out = augment(crop, frame, random.Random(seed))
        black = out.max(axis=2) == 0
        assert 0.04 < _black_share(out) < 0.85 and out[50, 50].tolist() == [180, 180, 180]  # the centre stays
        rows, cols = black.all(axis=1), black.all(axis=0)
        assert (black == (rows[:, None] | cols[None, :])).all()  # whole rows and columns: bands, not blotches
    assert _black_share(augment(crop, NONE, random.Random(0))) == 0


def test_a_tighter_framing_with_fitted_edges_enlarges_part_of_the_crop_without_black() -> None:
    crop = np.zeros((100, 100, 3), dtype=np.uint8)
    crop[:, :, 0] = np.linspace(1, 250, 100).astype(np.uint8)[None, :]  # red grows left to right
    frame = NONE.model_copy(update={"frame": 1.0, "edges": "fit"})
    spans = []
    for seed in range(30):
        out = augment(crop, frame, random.Random(seed))
        assert out.shape == crop.shape and _black_share(out) == 0
        spans.append(int(out[50, -1, 0]) - int(out[50, 0, 0]))
    assert min(spans) < 0.75 * 249 and max(spans) > 0.9 * 249  # squares of 60-100% of the side


def test_frame_min_sets_the_tightest_framing_drawn() -> None:
    crop = np.zeros((100, 100, 3), dtype=np.uint8)
    crop[:, :, 0] = np.linspace(1, 250, 100).astype(np.uint8)[None, :]
    def spans(smallest: float) -> list[int]:
        frame = NONE.model_copy(update={"frame": 1.0, "edges": "fit", "frame_min": smallest})
        return [int(out[50, -1, 0]) - int(out[50, 0, 0]) for out in (augment(crop, frame, random.Random(seed)) for seed in range(60))]
    assert min(spans(0.6)) > 0.55 * 249
    assert min(spans(0.4)) < 0.5 * 249  # close-up framings, the face filling the crop


def test_a_tighter_framing_is_drawn_at_its_rate_for_any_crop() -> None:
    crop = np.full((40, 40, 3), 90, dtype=np.uint8)
    some = NONE.model_copy(update={"frame": 0.3})
    outs = [augment(crop, some, random.Random(seed)) for seed in range(400)]
    assert 80 < sum(_black_share(out) > 0 for out in outs) < 160


def test_erasing_fills_one_rectangle_with_the_mean_colour_at_its_rate() -> None:
    crop = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mean = crop.reshape(-1, 3).mean(axis=0).round()
    always = NONE.model_copy(update={"erase": 1.0})
    for seed in range(30):
        changed = (augment(crop, always, random.Random(seed)) != crop).any(axis=2)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        box = changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.mean() > 0.9 and 0.01 < changed.mean() < 0.3  # one solid rectangle of 2-25% of the crop
        np.testing.assert_array_equal(augment(crop, always, random.Random(seed))[changed], np.broadcast_to(mean, (changed.sum(), 3)))
    np.testing.assert_array_equal(augment(crop, NONE, random.Random(0)), crop)
    some = NONE.model_copy(update={"erase": 0.3})
    outs = [augment(crop, some, random.Random(seed)) for seed in range(300)]
    assert 60 < sum(not np.array_equal(out, crop) for out in outs) < 120


def test_shuffling_puts_the_same_tiles_back_in_another_order_at_its_rate() -> None:
    crop = np.random.default_rng(4).integers(0, 256, (66, 66, 3), dtype=np.uint8)
    always = NONE.model_copy(update={"shuffle": 1.0})

    def tiles(pixels: np.ndarray) -> list[bytes]:
        return [pixels[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].tobytes() for r in range(4) for c in range(4)]

    moved = 0
    for seed in range(10):
        out = augment(crop, always, random.Random(seed))
        assert sorted(tiles(out)) == sorted(tiles(crop))  # every tile kept whole, none lost or repeated
        np.testing.assert_array_equal(out[64:], crop[64:])  # what the grid leaves over stays in place
        np.testing.assert_array_equal(out[:, 64:], crop[:, 64:])
        moved += tiles(out) != tiles(crop)
    assert moved == 10
    some = NONE.model_copy(update={"shuffle": 0.3})
    outs = [augment(crop, some, random.Random(seed)) for seed in range(300)]
    assert 60 < sum(not np.array_equal(out, crop) for out in outs) < 120


def test_a_tint_moves_red_and_blue_apart_either_way_at_its_rate() -> None:
    crop = np.full((32, 32, 3), 128, dtype=np.uint8)
    always = NONE.model_copy(update={"tint": 1.0})
    shifts = []
    for seed in range(60):
        red, green, blue = (int(v) for v in augment(crop, always, random.Random(seed))[0, 0])
        assert green == 128 and abs((red - 128) + (blue - 128)) <= 1  # red and blue move by the same amount, opposite ways
        shifts.append(red - 128)
    assert min(shifts) < -15 and max(shifts) > 15 and max(abs(s) for s in shifts) <= round(0.2 * 128)  # warm and cool, within 20%
    some = NONE.model_copy(update={"tint": 0.3})
    outs = [augment(crop, some, random.Random(seed)) for seed in range(300)]
    assert 60 < sum(not np.array_equal(out, crop) for out in outs) < 120
