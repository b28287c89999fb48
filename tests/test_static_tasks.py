"""Every task gives the same tokens with the static loop as with the exact cache (the embedded
default model on CPU, fp32): chat, understanding, text-to-image plain and thinking, editing and
interleaved output, through the pipeline's own prompts, guidance and phases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lladauni.model_core.pipeline import LLaDAUni


@pytest.fixture(scope="module")
def pipe():
    return LLaDAUni.from_pretrained(None, device="cpu")


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((128, 128))


def _both(fn):
    return fn("exact"), fn("static")


def _image_key(r):
    return (r.codes.tolist(), r.h, r.w, r.thinking)


def test_chat_and_understanding(pipe):
    a, b = _both(lambda c: pipe.chat("what colour is the sky?", gen_length=96, cache=c))
    assert a.token_ids == b.token_ids and a.text == b.text
    a, b = _both(lambda c: pipe.chat("Describe a red circle in detail, please.", gen_length=128, cache=c))
    assert a.token_ids == b.token_ids and len(a.token_ids) > 12
    img = _image()
    a, b = _both(lambda c: pipe.understand(img, "what is in the picture?", gen_length=64, cache=c))
    assert a.token_ids == b.token_ids


def test_text_to_image_plain_and_thinking(pipe):
    a, b = _both(lambda c: pipe.generate_image("a red circle at the top left", decode=False,
                                               seed=3, cache=c))
    assert _image_key(a) == _image_key(b)
    a, b = _both(lambda c: pipe.generate_image("a blue square", mode="thinking",
                                               thinking_gen_length=64, decode=False, seed=4, cache=c))
    assert _image_key(a) == _image_key(b)


def test_edit(pipe):
    src = _image(1)
    a, b = _both(lambda c: pipe.edit_image(src, "make it blue", decode=False, seed=5, cache=c))
    assert _image_key(a) == _image_key(b)


def test_interleaved_with_an_image(tmp_path):
    """The embedded model rarely opens an image by itself: its <boi> row is made a copy (x1.05) of a token its
    plain answer writes a few tokens in, so the text phase stops there for an image. Which token does it depends
    on the weights, so the first of a few positions whose exact-cache run opens an image is taken."""
    pipe = LLaDAUni.from_pretrained(None, device="cpu")
    prompt = "Draw a red circle at the top left, then describe it."
    plain = pipe.generate_interleaved(prompt, text_gen_length=64, decode=False, cache="exact")
    ids = pipe.tokenizer.encode(plain.text)
    boi = pipe.tokenizer.special.boi
    head = pipe.backbone.lm_head.weight
    original = head[boi].clone()
    for k in (6, 4, 8, 2, 5, 3, 7, 1):
        with torch.no_grad():
            head[boi] = head[ids[min(k, len(ids) - 1)]] * 1.05
        a = pipe.generate_interleaved(prompt, text_gen_length=64, decode=False, cache="exact")
        if a.images:
            break
        with torch.no_grad():
            head[boi] = original
    assert a.images, (plain.text, a.segments)
    b = pipe.generate_interleaved(prompt, text_gen_length=64, decode=False, cache="static")
    assert [s if isinstance(s, str) else _image_key(s) for s in a.segments] == \
        [s if isinstance(s, str) else _image_key(s) for s in b.segments]
