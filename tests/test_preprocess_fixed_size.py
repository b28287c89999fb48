"""``PreprocessorConfig.fixed_size``: validation, the file round trip, the fixed-size resize of
``prepare_image`` (published policies unchanged without it), and the size-token error message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lladauni.model_core import ConfigError, TextTokenizer
from lladauni.model_core.image_config import PreprocessorConfig
from lladauni.model_core.image_preprocess import fixed_resize, prepare_image, to_pixel_values

REF = Path("/work/shared/reference/llada2-uni/image_tokenizer")
DATA = Path(__file__).parent / "data" / "llada2-uni" / "image_tokenizer"
PUB_DIR = DATA if (DATA / "preprocessor_config.json").is_file() else REF
PUBLISHED_PRE = json.loads((PUB_DIR / "preprocessor_config.json").read_text())

SHAPES = PreprocessorConfig(patch_size=32, fixed_size=[96, 96])


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "value,match",
    [
        ("96x96", r"fixed_size='96x96': expected list"),
        ([96], r"fixed_size=\[96\]: expected \[height, width\]"),
        ([96, 96, 96], r"fixed_size=\[96, 96, 96\]: expected \[height, width\]"),
        ([96.0, 96], r"fixed_size=\[96.0, 96\]: expected \[height, width\], two positive ints"),
        ([True, 96], r"fixed_size=\[True, 96\]: expected \[height, width\]"),
        ([0, 96], r"fixed_size=\[0, 96\]: expected \[height, width\], two positive ints"),
        ([-32, 96], r"fixed_size=\[-32, 96\]"),
        ([96, 100], r"fixed_size=\[96, 100\]: height and width must be multiples of patch_size=32"),
    ],
)
def test_bad_fixed_size_names_the_field(value, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessorConfig(patch_size=32, fixed_size=value)


def test_fixed_size_is_checked_against_the_files_patch_size():
    with pytest.raises(ConfigError, match=r"fixed_size=\[96, 100\]: .*multiples of patch_size=16"):
        PreprocessorConfig.from_dict(dict(PUBLISHED_PRE, fixed_size=[96, 100]))
    with pytest.raises(ConfigError, match=r"fixed_size=\[96, 96\]: .*multiples of patch_size=64"):
        PreprocessorConfig.from_dict(dict(PUBLISHED_PRE, patch_size=64, fixed_size=[96, 96]))
    assert PreprocessorConfig.from_dict(dict(PUBLISHED_PRE, fixed_size=[96, 96])).fixed_size == [96, 96]


def test_published_file_round_trips_without_the_field(tmp_path):
    pre = PreprocessorConfig.from_dict(PUBLISHED_PRE)
    assert pre.fixed_size is None
    assert pre.to_dict() == PUBLISHED_PRE and list(pre.to_dict()) == list(PUBLISHED_PRE)
    assert "fixed_size" not in PreprocessorConfig().to_dict()  # a code-built default writes no null
    pre.to_json_file(tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text()) == PUBLISHED_PRE


def test_round_trip_with_the_field(tmp_path):
    data = dict(PUBLISHED_PRE, patch_size=32, fixed_size=[96, 64])
    pre = PreprocessorConfig.from_dict(data)
    assert pre.fixed_size == [96, 64]
    assert pre.to_dict() == data and list(pre.to_dict()) == list(data)
    # set in code on the published file: appended after the file's keys
    edited = PreprocessorConfig.from_dict(dict(PUBLISHED_PRE, patch_size=32))
    edited.fixed_size = [96, 96]
    assert list(edited.to_dict()) == list(PUBLISHED_PRE) + ["fixed_size"]
    SHAPES.to_json_file(tmp_path / "p.json")
    back = PreprocessorConfig.from_json_file(tmp_path / "p.json")
    assert back == SHAPES and back.to_dict() == SHAPES.to_dict()
    assert json.loads((tmp_path / "p.json").read_text())["fixed_size"] == [96, 96]


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("purpose", ["understand", "edit"])
@pytest.mark.parametrize("multi_image", [False, True])
def test_fixed_size_resize(purpose, multi_image):
    src = _img(200, 150)
    img, pv, grid = prepare_image(src, purpose, SHAPES, multi_image=multi_image)
    assert img.size == (96, 96) and img.mode == "RGB"
    assert tuple(pv.shape) == (9, 3 * 32 * 32) and grid == (3, 3)
    # scale to cover (150 -> 96, 200 -> 128), then the centred 96x96 crop
    expected = src.resize((128, 96), resample=Image.BICUBIC).crop((16, 0, 112, 96))
    assert np.array_equal(np.asarray(img), np.asarray(expected))
    assert np.array_equal(pv.numpy(), to_pixel_values(expected, SHAPES).numpy())


def test_fixed_size_non_square_and_legacy_crop_ignored():
    cfg = PreprocessorConfig(patch_size=32, fixed_size=[64, 128])
    for purpose in ("understand", "edit"):
        img, pv, grid = prepare_image(_img(100, 300), purpose, cfg, legacy_crop=True)
        assert img.size == (128, 64) and grid == (2, 4) and tuple(pv.shape) == (8, 3072)


@pytest.mark.parametrize("purpose", ["understand", "edit", "none"])
def test_fixed_size_input_is_untouched(purpose):
    src = _img(96, 96, seed=3)
    img, pv, grid = prepare_image(src, purpose, SHAPES)
    assert np.array_equal(np.asarray(img), np.asarray(src)) and grid == (3, 3)
    assert np.array_equal(pv.numpy(), to_pixel_values(src, SHAPES).numpy())
    assert fixed_resize(src, 96, 96) is src


def test_fixed_size_none_purpose_keeps_its_meaning():
    # no resizing: any patch-multiple size is taken as it is, and the published grid rule is off
    img, pv, grid = prepare_image(_img(160, 64), "none", SHAPES)
    assert img.size == (160, 64) and grid == (2, 5) and tuple(pv.shape) == (10, 3072)
    with pytest.raises(ValueError, match="not a multiple of the 32-pixel patch"):
        prepare_image(_img(100, 96), "none", SHAPES)


def test_published_default_is_unchanged():
    pre = PreprocessorConfig.from_dict(PUBLISHED_PRE)
    # a small image still gets the published smart resize (factor 32: 150 -> 160, 200 -> 192) ...
    img, pv, grid = prepare_image(_img(200, 150), "understand", pre)
    assert img.size == (192, 160) and grid == (10, 12) and tuple(pv.shape) == (120, 768)
    # ... and a tiny one is scaled up to the 128² minimum
    img, _, grid = prepare_image(_img(40, 40), "understand", pre)
    assert img.size == (128, 128) and grid == (8, 8)
    # the ~512² edit crop list
    img, _, grid = prepare_image(_img(200, 150), "edit", pre)
    assert img.size == (576, 448) and grid == (28, 36)
    # the published grid rule still applies to the prompt resizes (a 4000x100 source gives 6x250) ...
    with pytest.raises(ValueError, match="cannot be written as a size token"):
        prepare_image(_img(4000, 100), "understand", pre)
    # ... while 'none' encodes any grid, as the official encoder does (prompt building checks it)
    assert prepare_image(_img(48, 48), "none", pre)[2] == (3, 3)


# ----------------------------------------------------------------------------- size tokens
class _FewSizes:
    """The tiny checkpoint's tokenizer with only ``<|reserved_token_3|>`` as a size token."""

    def __init__(self, hf) -> None:
        self._hf = hf
        vocab = hf.get_vocab()
        self._vocab = {t: i for t, i in vocab.items() if not t.startswith("<|reserved_token_")}
        self._vocab["<|reserved_token_3|>"] = vocab["<|reserved_token_8|>"]

    def get_vocab(self):
        return dict(self._vocab)

    def __getattr__(self, name):
        return getattr(self._hf, name)


def test_size_token_message_lists_the_sides(tiny_ckpt):
    tok = TextTokenizer.from_pretrained(tiny_ckpt)
    with pytest.raises(ValueError) as err:
        tok.size_token_id(9)
    msg = str(err.value)
    assert "grid side 9 has no size token <|reserved_token_9|>" in msg
    assert "this tokenizer has size tokens for sides 8..34 (even), 36..255" in msg

    few = TextTokenizer(_FewSizes(tok.hf), "few")
    assert few.size_token_ids == {3: tok.size_token_id(8)}
    assert few.image_header(3, 3)[1:3] == [tok.size_token_id(8)] * 2
    with pytest.raises(ValueError, match=r"grid side 4 has no size token .*this tokenizer has size tokens for sides 3$"):
        few.size_token_id(4)
    with pytest.raises(ValueError, match=r"grid side 8 has no size token"):
        few.image_header(8, 3)
