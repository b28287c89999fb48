"""Edges of image preprocessing: validation boundaries, array inputs of unusual shape and dtype,
compositing on white, the documented defaults of the public functions and small hand-computed
resize/crop cases (module docstring of model_core/image_preprocess.py, MODEL_SPEC §2 and §12)."""

from __future__ import annotations

import struct
import warnings
import zlib
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from lladauni.model_core.image_config import PreprocessorConfig
from lladauni.model_core.image_preprocess import (
    MIN_IMAGE_SIDE,
    edit_crop,
    edit_crop_sizes,
    fixed_resize,
    load_image,
    prepare_image,
    smart_resize,
)

PRE = PreprocessorConfig()


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG with a valid IHDR for a w x h grey image and no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- defaults
def test_smart_resize_default_is_the_single_image_budget():
    # 480x640 (h x w): 15 x 20 blocks of 32, 307200 pixels, inside 128²..800² -> kept as is.
    # Several images (max 448² = 200704): scale = sqrt(200704 / 307200); 480 * s = 388.0 -> 12 * 32,
    # 640 * s = 517.3 -> 16 * 32.
    img = _rgb(640, 480)
    assert smart_resize(img).size == (640, 480)
    assert smart_resize(img, multi_image=False).size == (640, 480)
    assert smart_resize(img, multi_image=True).size == (512, 384)
    out, _, grid = prepare_image(img, "understand", PRE)
    assert out.size == (640, 480) and grid == (30, 40)


def test_edit_default_resizes_to_cover_instead_of_the_legacy_crop():
    # A 1024² source picks the 512² box. By default the whole image is scaled (bicubic) to 512²;
    # legacy_crop=True would cut its central 512² out unscaled.
    img = _rgb(1024, 1024, seed=3)
    expected = np.asarray(img.resize((512, 512), resample=Image.BICUBIC))
    central = np.asarray(img)[256:768, 256:768]
    out, _, grid = prepare_image(img, "edit", PRE)
    assert grid == (32, 32)
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert not np.array_equal(np.asarray(out), central)
    np.testing.assert_array_equal(np.asarray(edit_crop(img)), expected)
    legacy, _, _ = prepare_image(img, "edit", PRE, legacy_crop=True)
    np.testing.assert_array_equal(np.asarray(legacy), central)


# ----------------------------------------------------------------------------- size validation
@pytest.mark.parametrize("w,h", [(MIN_IMAGE_SIDE - 1, 40), (40, MIN_IMAGE_SIDE - 1), (7, 7)])
def test_each_side_below_min_side_is_too_small(w, h):
    with pytest.raises(ValueError, match="too small"):
        load_image(_rgb(w, h))
    with pytest.raises(ValueError, match="too small"):
        load_image(np.zeros((h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("w,h", [(MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), (MIN_IMAGE_SIDE, 40), (40, MIN_IMAGE_SIDE)])
def test_sides_exactly_at_min_side_are_accepted(w, h):
    assert load_image(_rgb(w, h)).size == (w, h)
    assert load_image(np.zeros((h, w), dtype=np.uint8)).size == (w, h)


@pytest.mark.parametrize("w,h", [(1, 8), (8, 1), (1, 1)])
def test_one_pixel_sides_are_not_zero_sized(w, h):
    # Only a side of 0 is "zero-sized"; with min_side=1 a one-pixel side is a valid image.
    img = _rgb(w, h)
    out = load_image(img, min_side=1)
    assert out.size == (w, h)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))
    assert load_image(np.full((h, w), 9, dtype=np.uint8), min_side=1).getpixel((0, 0)) == (9, 9, 9)


def test_pil_decompression_bomb_warning_is_silenced_our_cap_decides():
    # 10000² = 1e8 pixels is above PIL's warning threshold (MAX_IMAGE_PIXELS, ~8.9e7) but below its
    # error threshold (twice that). Our own cap (or the caller's) decides, without a PIL warning.
    if Image.MAX_IMAGE_PIXELS is None or not Image.MAX_IMAGE_PIXELS < 10**8 <= 2 * Image.MAX_IMAGE_PIXELS:
        pytest.skip("PIL's decompression-bomb threshold was changed")
    data = _png_header_only(10000, 10000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="over the cap"):
            load_image(data)
        with pytest.raises(ValueError, match="corrupt or truncated"):
            load_image(data, max_pixels=10**8)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# ----------------------------------------------------------------------------- array inputs
def test_bool_array_is_black_and_white():
    mask = (np.indices((8, 10)).sum(axis=0) % 2).astype(bool)
    out = np.asarray(load_image(mask))
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    expected = np.where(mask, 255, 0).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


@pytest.mark.parametrize(
    "dtype,values,grey",
    [
        (np.uint8, [0, 1, 128, 255], [0, 1, 128, 255]),
        # 16-bit scaled by 255/65535 = 1/257 with rounding: 32768 / 257 = 127.50 -> 128
        (np.uint16, [0, 257, 32768, 65535], [0, 1, 128, 255]),
        (np.float32, [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # 63.75 -> 64, 127.5 -> 128 (half to even)
        (bool, [False, True, True, False], [0, 255, 255, 0]),
    ],
)
def test_single_channel_array_is_grey(dtype, values, grey):
    row = np.array(values, dtype=dtype)
    arr = np.tile(row, (8, 2))  # (8, 8): each row is values twice
    expected = np.tile(np.array(grey, dtype=np.uint8), (8, 2))
    for a in (arr, arr[..., None]):  # (H, W) and (H, W, 1) mean the same
        out = np.asarray(load_image(a))
        assert out.shape == (8, 8, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], expected)


def test_single_channel_array_is_not_a_channel_count_of_one_column():
    # (H, W, 1) with H, W >= 8 is grey of size W x H, not a (H, W) image with a bad last axis.
    arr = np.arange(9 * 12, dtype=np.uint8).reshape(9, 12, 1)
    out = load_image(arr)
    assert out.size == (12, 9)
    np.testing.assert_array_equal(np.asarray(out)[..., 1], arr[..., 0])


@pytest.mark.parametrize("top", [65535, 65534])
def test_wide_integers_up_to_65535_are_accepted(top):
    arr = np.zeros((8, 8), dtype=np.int32)
    arr[0, 0] = top
    assert load_image(arr).getpixel((0, 0)) == (round(top / 257),) * 3


@pytest.mark.parametrize("bad", [65536, 70000, -1])
def test_wide_integers_outside_16_bits_are_rejected(bad):
    arr = np.zeros((8, 8), dtype=np.int32)
    arr[3, 4] = bad
    with pytest.raises(ValueError, match="0..65535"):
        load_image(arr)
    with pytest.raises(ValueError, match="0..65535"):
        load_image(arr[..., None])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_float_is_rejected(bad):
    arr = np.full((8, 8, 3), 0.5, dtype=np.float64)
    arr[2, 5, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(arr)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(arr[..., 1:2])  # (H, W, 1)


def test_float_pixels_round_to_the_nearest_8_bit_value():
    # Values a millionth of a step either side of k + 1/2: the nearest 8-bit value of x * 255,
    # computed exactly here, is unambiguous (no tie) but needs more than float32 precision.
    xs = [(k + 0.5 + s * 1e-6) / 255 for k in (0, 1, 2, 50, 51, 101, 127, 128, 200, 201, 253) for s in (-1, 1)]
    arr = np.zeros((8, len(xs)), dtype=np.float64)
    arr[0] = xs
    got = np.asarray(load_image(arr))[0, :, 0]
    expected = [round(Fraction(x) * 255) for x in xs]
    assert got.tolist() == expected


def test_transparency_is_composited_on_opaque_white_exactly():
    # Every (colour, alpha) pair: c * a/255 + 255 * (1 - a/255), rounded to the nearest integer
    # (never a tie: the numerator over 255 is an integer, 255 is odd).
    c = np.arange(256)
    rgba = np.zeros((256, 256, 4), dtype=np.uint8)
    rgba[..., 0] = c[None, :]
    rgba[..., 1] = 255 - c[None, :]
    rgba[..., 2] = (c[None, :] * 7) % 256
    rgba[..., 3] = c[:, None]
    alpha = rgba[..., 3:].astype(np.int64)
    expected = (rgba[..., :3].astype(np.int64) * alpha + 255 * (255 - alpha) + 127) // 255
    for image in (rgba, Image.fromarray(rgba, "RGBA")):
        np.testing.assert_array_equal(np.asarray(load_image(image)), expected.astype(np.uint8))


# ----------------------------------------------------------------------------- edit crop list
def test_edit_crop_sizes_with_one_pixel_patches():
    # The walk by hand for num_patches=4, max_ratio=4: (4,1) (3,1) (2,1) (2,2) (1,2) (1,3) (1,4).
    assert edit_crop_sizes(num_patches=4, patch_size=1) == [(4, 1), (3, 1), (2, 1), (2, 2), (1, 2), (1, 3), (1, 4)]
    assert edit_crop_sizes(num_patches=1, patch_size=1) == [(1, 1)]
    for bad in ({"patch_size": 0}, {"patch_size": -32}, {"num_patches": 0}, {"max_ratio": 0.5}):
        with pytest.raises(ValueError, match="invalid"):
            edit_crop_sizes(**bad)


# ----------------------------------------------------------------------------- fixed size
@pytest.mark.parametrize("height,width", [(0, 16), (16, 0), (-16, 16), (16, -16), (0, 0)])
def test_fixed_resize_rejects_any_non_positive_side(height, width):
    with pytest.raises(ValueError, match="must be > 0"):
        fixed_resize(_rgb(16, 16), height, width)


def test_fixed_resize_one_pixel_sides_are_the_central_row_and_column():
    # 16x16 already covers 1x16 / 16x1 at scale 1: no resampling, crop offset (16 - 1) // 2 = 7.
    img = _rgb(16, 16, seed=5)
    arr = np.asarray(img)
    row = fixed_resize(img, 1, 16)
    assert row.size == (16, 1)
    np.testing.assert_array_equal(np.asarray(row), arr[7:8])
    col = fixed_resize(img, 16, 1)
    assert col.size == (1, 16)
    np.testing.assert_array_equal(np.asarray(col), arr[:, 7:8])


@pytest.mark.parametrize("excess", [1, 2, 3, 5])
def test_fixed_resize_centre_crop_offset_is_floored(excess):
    # An image 16 wide and 16 + excess tall already covers 16x16 at scale 1 (no resampling): the
    # crop keeps rows excess // 2 .. excess // 2 + 16; likewise for the width.
    tall = _rgb(16, 16 + excess, seed=excess)
    out = fixed_resize(tall, 16, 16)
    assert out.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(tall)[excess // 2 : excess // 2 + 16])
    wide = _rgb(16 + excess, 16, seed=excess)
    out = fixed_resize(wide, 16, 16)
    assert out.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(wide)[:, excess // 2 : excess // 2 + 16])
    odd = _rgb(15, 15 + excess, seed=excess)  # an odd target side too
    out = fixed_resize(odd, 15, 15)
    assert out.size == (15, 15)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(odd)[excess // 2 : excess // 2 + 15])


# ----------------------------------------------------------------------------- purpose "none"
@pytest.mark.parametrize("w,h", [(32, 40), (40, 32), (40, 40)])
def test_none_with_one_side_off_the_patch_grid_says_none_does_not_resize(w, h):
    with pytest.raises(ValueError, match=r"not a multiple of the 16-pixel patch; purpose='none' does not resize"):
        prepare_image(_rgb(w, h), "none", PRE)
