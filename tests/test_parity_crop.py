"""``legacy_crop=True`` against a naive restatement of the official edit crop.

The official editing scripts call ``var_center_crop(image, generate_crop_size_list((512 // 32) ** 2, 32))``
(decoder/utils.py): pick the candidate box (cw, ch) whose aspect is closest to the image's (ties to the
larger box), cut it out of the *unscaled* image at left = max(0, (W - cw) // 2), top = max(0, (H - ch) // 2),
then resize the crop to (cw, ch) with LANCZOS. PIL fills the part of the box outside the image with
zeros, so an image smaller than its box sits at the top-left with black on the right and bottom.
The reference below does the same with numpy slicing, independently of our ``edit_crop``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lladauni.model_core.image_config import ImageTokenizerConfig, PreprocessorConfig
from lladauni.model_core.image_preprocess import edit_crop, prepare_image, to_pixel_values
from lladauni.model_core.image_tokenizer import ImageTokenizer
from lladauni.model_core.testing_image import random_image_tokenizer

PRE = PreprocessorConfig()

# (W, H): the 600x400 image of the parity report, odd margins (W - cw or H - ch odd) with images
# smaller than, larger than and straddling their box, an exact fit and a tiny source.
SIZES = [(600, 400), (601, 403), (1025, 777), (3001, 203), (203, 3001), (530, 509), (990, 250), (512, 512), (100, 37)]


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, (h, w, 3), dtype=np.uint8))  # no pure black pixel


def _official_boxes() -> list[tuple[int, int]]:
    """(cw, ch) candidates: 256 patches of 32 px, aspect <= 4, from the widest to the tallest."""
    boxes = []
    across, down = 256, 1
    while across > 0:
        if max(across, down) <= 4 * min(across, down):
            boxes.append((32 * across, 32 * down))
        if across * (down + 1) <= 256:
            down += 1
        else:
            across -= 1
    return boxes


def _official_crop(img: Image.Image) -> np.ndarray:
    """(ch, cw, 3) uint8: the official var_center_crop, written out by hand."""
    w, h = img.size
    scored = []
    for cw, ch in _official_boxes():
        a, b = cw / w, ch / h
        scored.append((min(a, b) / max(a, b), (cw, ch)))
    cw, ch = sorted(scored, reverse=True)[0][1]
    left, top = max(0, (w - cw) // 2), max(0, (h - ch) // 2)
    src = np.asarray(img)  # (H, W, 3)
    out = np.zeros((ch, cw, 3), dtype=np.uint8)  # PIL's fill outside the image
    part = src[top : top + ch, left : left + cw]  # clipped at the image's right and bottom edges
    out[: part.shape[0], : part.shape[1]] = part
    return out  # the official LANCZOS resize to (cw, ch) leaves this unchanged (see below)


def test_lanczos_resize_to_the_same_size_is_a_no_op():
    img = _img(608, 416, seed=9)
    assert np.array_equal(np.asarray(img.resize(img.size, Image.LANCZOS)), np.asarray(img))


@pytest.mark.parametrize("w,h", SIZES)
def test_legacy_crop_matches_the_official_crop_pixel_for_pixel(w, h):
    src = _img(w, h, seed=w + h)
    expected = _official_crop(src)
    assert np.array_equal(np.asarray(edit_crop(src, legacy_crop=True)), expected)
    img, pv, grid = prepare_image(src, "edit", PRE, legacy_crop=True)
    assert np.array_equal(np.asarray(img), expected)
    assert grid == (expected.shape[0] // 16, expected.shape[1] // 16)
    assert torch.equal(pv, to_pixel_values(Image.fromarray(expected), PRE))


def test_small_image_stays_top_left_with_black_right_and_bottom():
    src = Image.new("RGB", (600, 400), (200, 100, 50))
    out = np.asarray(edit_crop(src, legacy_crop=True))
    assert out.shape == (416, 608, 3)
    assert (out[:400, :600] == [200, 100, 50]).all()
    assert (out[400:] == 0).all() and (out[:, 600:] == 0).all()


def test_fixed_path_keeps_its_own_behaviour():
    src = Image.new("RGB", (600, 400), (200, 100, 50))
    out = np.asarray(edit_crop(src))
    assert out.shape == (416, 608, 3) and (out == [200, 100, 50]).all()  # scaled to cover, no black


def test_legacy_codes_of_a_600x400_image_are_the_official_ones():
    cfg = ImageTokenizerConfig.tiny()
    tok = ImageTokenizer(random_image_tokenizer(cfg, seed=0), PRE, legacy_crop=True)
    src = _img(600, 400, seed=3)
    got = tok.encode(src, purpose="edit")
    expected = _official_crop(src)
    gh, gw = expected.shape[0] // 16, expected.shape[1] // 16
    assert (got.h, got.w) == (gh, gw) == (26, 38)
    want = tok.network(to_pixel_values(Image.fromarray(expected), PRE), [(gh, gw)])
    assert torch.equal(got.codes, want)
