"""Image preprocessing: loading and mode conversion, the understanding and editing resizes, size-token
grid checks, float32 normalisation and patch rows; every bad input gives a ValueError naming it."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lladauni.model_core.image_config import PreprocessorConfig
from lladauni.model_core.image_preprocess import (
    check_grid,
    edit_crop,
    edit_crop_sizes,
    grid_side_ok,
    load_image,
    pick_edit_size,
    prepare_image,
    smart_resize_size,
    to_pixel_values,
)

PRE = PreprocessorConfig()
# §12: <|reserved_token_N|> exists for even N in 8..34 and every N in 36..255.
EXPRESSIBLE = set(range(8, 35, 2)) | set(range(36, 256))


def _img(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- grid sides
def test_grid_sides_are_exactly_the_size_tokens():
    assert {n for n in range(0, 400) if grid_side_ok(n)} == EXPRESSIBLE
    check_grid(8, 255)
    for gh, gw, bad in [(9, 8, "height 9"), (8, 35, "width 35"), (6, 40, "height 6"), (40, 256, "width 256")]:
        with pytest.raises(ValueError, match=bad + " cannot be written as a size token"):
            check_grid(gh, gw, (16 * gw, 16 * gh))


# ----------------------------------------------------------------------------- understanding
def _independent_smart_size(h: int, w: int, lo: int, hi: int) -> tuple[int, int]:
    """Qwen2.5-VL smart resize written with exact fractions (round half to even, as Python's round)."""
    def rnd(x: Fraction) -> int:
        return round(x)

    hb, wb = max(rnd(Fraction(h, 32)) * 32, 32), max(rnd(Fraction(w, 32)) * 32, 32)
    if hb * wb > hi:
        s = math.sqrt(hi / (h * w))
        return max(math.floor(h * s / 32) * 32, 32), max(math.floor(w * s / 32) * 32, 32)
    if hb * wb < lo:
        s = math.sqrt(lo / (h * w))
        return math.ceil(h * s / 32) * 32, math.ceil(w * s / 32) * 32
    return hb, wb


@pytest.mark.parametrize(
    "h,w,expected",
    [
        (1024, 1024, (800, 800)),  # over the 800² budget: floor to 32
        (300, 500, (288, 512)),  # inside: nearest multiples of 32
        (100, 100, (128, 128)),  # under the 128² minimum: ceil to 32
        (720, 1280, (576, 1056)),  # 22.5 rounds to 22 (half to even), then over budget: scaled down
        (48, 48, (128, 128)),
        (2000, 600, (1440, 416)),
    ],
)
def test_smart_resize_golden_sizes(h, w, expected):
    assert smart_resize_size(h, w, min_pixels=128 * 128, max_pixels=800 * 800) == expected


def test_smart_resize_many_sizes_against_an_independent_computation():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(8, 3000, (60, 2))] + [(16, 16), (3000, 3000), (800, 800), (801, 799)]
    for h, w in sizes:
        for lo, hi in ((128 * 128, 800 * 800), (128 * 128, 448 * 448)):
            th, tw = smart_resize_size(h, w, min_pixels=lo, max_pixels=hi)
            assert (th, tw) == _independent_smart_size(h, w, lo, hi), (h, w)
            assert th % 32 == 0 and tw % 32 == 0


def test_understand_output_sizes_and_grid_check_for_many_aspect_ratios():
    rng = np.random.default_rng(1)
    for i in range(30):
        w, h = int(rng.integers(16, 1600)), int(rng.integers(16, 1600))
        th, tw = _independent_smart_size(h, w, 128 * 128, 800 * 800)
        # cover the target, then crop to 32-aligned sides never below the target: one side may
        # come out larger than the target, as in the official resizer
        s = max(th / h, tw / w)
        th, tw = max(round(h * s) // 32 * 32, th), max(round(w * s) // 32 * 32, tw)
        src = _img(w, h, seed=i)
        if th // 16 in EXPRESSIBLE and tw // 16 in EXPRESSIBLE:
            img, pv, grid = prepare_image(src, "understand", PRE)
            assert img.size == (tw, th) and grid == (th // 16, tw // 16) and pv.shape == (th * tw // 256, 768)
        else:
            with pytest.raises(ValueError, match="cannot be written as a size token"):
                prepare_image(src, "understand", PRE)


def test_understand_resize_is_bicubic_cover_then_centre_crop():
    src = _img(500, 300, seed=3)
    img, _, _ = prepare_image(src, "understand", PRE)
    scale = max(288 / 300, 512 / 500)
    manual = src.resize((round(500 * scale), round(300 * scale)), Image.BICUBIC)
    left, top = (manual.width - 512) // 2, (manual.height - 288) // 2
    assert np.array_equal(np.asarray(img), np.asarray(manual.crop((left, top, left + 512, top + 288))))


def test_several_images_use_the_448_budget():
    single, _, g1 = prepare_image(_img(1000, 1000), "understand", PRE)
    multi, _, g2 = prepare_image(_img(1000, 1000), "understand", PRE, multi_image=True)
    assert (single.size, g1) == ((800, 800), (50, 50)) and (multi.size, g2) == ((448, 448), (28, 28))


def test_extreme_aspect_gives_a_clear_error():
    with pytest.raises(ValueError, match=r"grid 6x250 \(4000x96 pixels\): height 6 cannot be written"):
        prepare_image(_img(4000, 100), "understand", PRE)


# ----------------------------------------------------------------------------- editing
def test_edit_crop_list_is_the_official_one():
    sizes = edit_crop_sizes()
    assert len(sizes) == 49 and sizes[0] == (1024, 256) and sizes[-1] == (256, 1024) and (512, 512) in sizes
    assert sizes[:6] == [(1024, 256), (992, 256), (960, 256), (928, 256), (896, 256), (896, 288)]
    for cw, ch in sizes:
        assert cw % 32 == 0 and ch % 32 == 0 and cw * ch <= 512 * 512 and max(cw, ch) / min(cw, ch) <= 4
        assert ch // 16 in EXPRESSIBLE and cw // 16 in EXPRESSIBLE
    assert sizes == [(h, w) for w, h in reversed(sizes)]  # symmetric


def test_pick_edit_size_is_the_closest_aspect():
    assert pick_edit_size(1024, 1024) == (512, 512)
    assert pick_edit_size(4000, 1000) == (1024, 256)
    assert pick_edit_size(1000, 5000) == (256, 1024)
    for w, h in [(640, 480), (1920, 1080), (333, 777)]:
        cw, ch = pick_edit_size(w, h)
        best = min(abs(math.log((c / r) / (w / h))) for c, r in edit_crop_sizes())
        assert abs(math.log((cw / ch) / (w / h))) == pytest.approx(best)


def test_edit_crop_resizes_first_and_legacy_reproduces_the_official_crop():
    src = _img(1024, 1024, seed=4)
    legacy = edit_crop(src, legacy_crop=True)
    assert np.array_equal(np.asarray(legacy), np.asarray(src.crop((256, 256, 768, 768))))  # central 512², unscaled
    fixed = edit_crop(src)
    assert fixed.size == (512, 512)
    assert np.array_equal(np.asarray(fixed), np.asarray(src.resize((512, 512), Image.BICUBIC)))  # whole image, scaled
    small = Image.new("RGB", (300, 300), (200, 100, 50))
    padded = np.asarray(edit_crop(small, legacy_crop=True))  # offsets clamped at 0: top-left, black beyond
    assert padded[0, 0].tolist() == [200, 100, 50] and padded[511, 511].tolist() == [0, 0, 0]
    up = np.asarray(edit_crop(small))
    assert up.shape == (512, 512, 3) and (up == [200, 100, 50]).all()  # enlarged, no black padding
    wide = edit_crop(_img(1000, 300))
    assert wide.size == pick_edit_size(1000, 300)


# ----------------------------------------------------------------------------- pixels
def test_pixel_values_rescale_then_normalise_in_float32_and_patch_rows():
    img = _img(80, 48, seed=5)
    pv = to_pixel_values(img, PRE)
    arr = np.asarray(img).astype(np.float32)
    expected = (arr * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.5)  # (H, W, C)
    t = torch.from_numpy(expected).permute(2, 0, 1)[None]  # (1, C, H, W)
    rows = F.unfold(t, kernel_size=16, stride=16)[0].t()  # (gh*gw, C*16*16), raster, (C, p, p)
    assert pv.dtype == torch.float32 and pv.shape == (15, 768)
    assert torch.equal(pv, rows)
    assert float(pv.min()) >= -1.0 and float(pv.max()) <= 1.0
    other = PreprocessorConfig(image_mean=[0.1, 0.2, 0.3], image_std=[0.2, 0.3, 0.4], do_rescale=False)
    exp2 = (arr - np.float32([0.1, 0.2, 0.3])) / np.float32([0.2, 0.3, 0.4])
    assert torch.equal(to_pixel_values(img, other), F.unfold(torch.from_numpy(exp2).permute(2, 0, 1)[None], 16, stride=16)[0].t())


def test_purpose_none_keeps_the_image():
    src = _img(192, 128)
    img, pv, grid = prepare_image(src, "none", PRE)
    assert grid == (8, 12) and np.array_equal(np.asarray(img), np.asarray(src))
    with pytest.raises(ValueError, match=r"200x128 is not a multiple of the 16-pixel patch"):
        prepare_image(_img(200, 128), "none", PRE)
    # no size-token check for 'none' (the official encoder has none; prompt building checks)
    assert prepare_image(_img(48, 48), "none", PRE)[2] == (3, 3)
    assert prepare_image(_img(128, 96), "none", PRE)[2] == (6, 8)
    with pytest.raises(ValueError, match=r"purpose='generate'"):
        prepare_image(src, "generate", PRE)


# ----------------------------------------------------------------------------- inputs and modes
def test_every_input_kind_gives_the_same_pixels(tmp_path):
    src = _img(64, 40, seed=6)
    path = tmp_path / "a.png"
    src.save(path)
    want = np.asarray(src)
    for item in (src, path, str(path), _png(src), bytearray(_png(src)), memoryview(_png(src)), np.asarray(src)):
        out = load_image(item)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), want), type(item)
        assert out is not src


def test_rgba_la_and_transparent_palette_are_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(100).reshape(10, 10) * 255 // 99  # alpha ramp 0..255
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA"))).astype(float)
    a = rgba[..., 3:4] / 255.0
    expected = a * rgba[..., :3] + (1 - a) * 255.0
    assert np.abs(out - expected).max() <= 1.0
    assert out[0, 0].tolist() == [255, 255, 255] and out[-1, -1].tolist() == [200, 0, 0]
    np_out = np.asarray(load_image(rgba))  # numpy RGBA goes the same way
    assert np.array_equal(np_out, out.astype(np.uint8))
    la = Image.fromarray(np.stack([np.full((8, 8), 40, np.uint8), np.zeros((8, 8), np.uint8)], -1), "LA")
    assert (np.asarray(load_image(la)) == 255).all()
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    assert (np.asarray(load_image(pal)) == 255).all()
    del pal.info["transparency"]
    assert np.asarray(load_image(pal))[0, 0].tolist() == [10, 20, 30]


def test_16bit_cmyk_grey_and_bilevel_modes(tmp_path):
    grey16 = np.array([[0, 257, 32768, 65535]] * 8, dtype=np.uint16).repeat(2, axis=1)  # (8, 8)
    path = tmp_path / "g16.png"
    Image.fromarray(grey16).save(path)
    opened = Image.open(path)
    assert opened.mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out[0, ::2, 0].tolist() == [0, 1, 128, 255]  # scaled, not clipped to white
    assert np.array_equal(np.asarray(load_image(grey16))[..., 1], out[..., 1])
    cmyk = _img(16, 16, seed=7).convert("CMYK")
    assert np.array_equal(np.asarray(load_image(cmyk)), np.asarray(cmyk.convert("RGB")))
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    g = np.asarray(load_image(grey))
    assert (g[..., 0] == g[..., 2]).all() and g[1, 0, 0] == 8
    assert np.asarray(load_image(Image.new("1", (8, 8), 1))).min() == 255
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.asarray(load_image(f))[-1, -1, 0] == 255 and np.asarray(load_image(f))[0, 0, 0] == 0


def test_inputs_are_never_mutated():
    src = _img(40, 30, seed=8, mode="RGBA")
    before = (src.mode, src.size, src.tobytes(), dict(src.info))
    load_image(src)
    prepare_image(src, "understand", PRE)
    assert (src.mode, src.size, src.tobytes(), dict(src.info)) == before
    arr = np.random.default_rng(0).integers(0, 65535, (20, 20), dtype=np.uint16)
    copy = arr.copy()
    prepare_image(arr, "edit", PRE)
    assert np.array_equal(arr, copy) and arr.flags.writeable


def test_corrupt_truncated_and_non_image_inputs(tmp_path):
    data = _png(_img(64, 64))
    with pytest.raises(ValueError, match="not an image PIL can read"):
        load_image(b"hello, this is text")
    with pytest.raises(ValueError, match="not an image PIL can read"):
        load_image(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="image bytes are empty"):
        load_image(b"")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])
    jpg = io.BytesIO()
    _img(256, 256).save(jpg, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(jpg.getvalue()[:3000])
    with pytest.raises(ValueError, match=r"image file .*t\.jpg: corrupt or truncated"):
        load_image(tmp_path / "t.jpg")
    with pytest.raises(ValueError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(TypeError, match="unsupported image input of type Tensor"):
        load_image(torch.zeros(3, 8, 8))


def test_pixel_cap_guards_against_decompression_bombs(tmp_path):
    big = Image.new("RGB", (4000, 3000), (1, 2, 3))  # compresses to a few KB
    data = _png(big)
    assert len(data) < 100_000
    with pytest.raises(ValueError, match=r"4000x3000 = 12,000,000 pixels, over the cap of 1,000,000"):
        load_image(data, max_pixels=1_000_000)
    assert load_image(data, max_pixels=12_000_000).size == (4000, 3000)
    with pytest.raises(ValueError, match="over the cap"):
        load_image(np.zeros((2000, 1000, 3), np.uint8), max_pixels=1_000_000)
    with pytest.raises(ValueError, match="over the cap"):
        prepare_image(big, "understand", PRE, max_pixels=1_000_000)


def test_zero_sized_too_small_and_bad_arrays():
    with pytest.raises(ValueError, match=r"zero-sized \(10x0 pixels\)"):
        load_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="zero-sized"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match=r"too small \(4x4 pixels; each side must be >= 8\)"):
        load_image(_png(_img(4, 4)))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 2\)"):
        load_image(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match=r"float values must lie in \[0, 1\], got 2\.\.2"):
        load_image(np.full((8, 8, 3), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match=r"integer values must lie in 0\.\.65535"):
        load_image(np.full((8, 8), -1, np.int32))
