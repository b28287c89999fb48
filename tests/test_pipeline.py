from __future__ import annotations

import numpy as np
import pytest
import torch

from lladauni.model_core.generation.prompts import ChatMessage, ImageCodes
from lladauni.model_core.generation.sampler import SamplerResult
from lladauni.model_core.pipeline import GenerationError, LLaDAUni

SOI, EOI, BOI, EOS, OFFSET = 156901, 156902, 156904, 156892, 157184


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return LLaDAUni.from_pretrained(tiny_ckpt)


def _size(n):
    return 156895 + n


def _codes(h, w, seed=0):
    return ImageCodes(torch.randint(0, 16384, (h * w,), generator=torch.Generator().manual_seed(seed)), h, w)


# ---------------------------------------------------------------------------------- prompts
def test_t2i_prompts_follow_the_official_template(pipe):
    tok = pipe.tokenizer
    cond, null = pipe.prompts.text_to_image("a red cat", 32, 48)
    head = [SOI, _size(32), _size(48), BOI]
    sys = tok.encode("<role>SYSTEM</role> You are a text-to-image generation assistant. <role>HUMAN</role>")
    asst = tok.encode("<role>ASSISTANT</role>")
    assert cond == sys + tok.encode("a red cat") + asst + head
    assert null == sys + tok.encode("<uncondition>") + asst + head
    think = pipe.prompts.thinking_phase1("a red cat")
    assert think == tok.encode(
        "<role>SYSTEM</role> You are a text-to-image generation assistant with a thinking process. <role>HUMAN</role>"
    ) + tok.encode("a red cat") + asst


def test_understanding_and_editing_prompts(pipe):
    tok = pipe.tokenizer
    img = _codes(8, 10)
    ids = pipe.prompts.understanding(img, "what is this")
    assert ids == [SOI, _size(8), _size(10), BOI] + (img.codes + OFFSET).tolist() + [EOI] + tok.encode("what is this")
    chat = pipe.prompts.understanding(img, "what is this", template="chat")
    assert chat[: len(tok.encode("<role>SYSTEM</role> You are a multimodal understanding assistant. "))] == tok.encode(
        "<role>SYSTEM</role> You are a multimodal understanding assistant. "
    )
    assert chat[-len(tok.encode("<role>ASSISTANT</role>")):] == tok.encode("<role>ASSISTANT</role>")
    full, no_text, no_image = pipe.prompts.editing([img], "make it blue", 8, 10)
    sys = tok.encode("<role>SYSTEM</role> You are an image editing assistant. <role>HUMAN</role>")
    block = [SOI, _size(8), _size(10), BOI] + (img.codes + OFFSET).tolist() + [EOI]
    tail = tok.encode("<role>ASSISTANT</role>") + [SOI, _size(8), _size(10), BOI]
    assert full == sys + block + tok.encode("make it blue") + tail
    assert no_text == sys + block + tok.encode("<uncondition>") + tail
    assert no_image == sys + [SOI] + tok.encode("make it blue") + tail
    two, _, _ = pipe.prompts.editing([img, _codes(8, 8, 1)], "merge", 8, 10)
    assert two.count(EOI) == 2
    with pytest.raises(ValueError, match="instruction"):
        pipe.prompts.editing([img], "  ", 8, 10)


def test_image_codes_validation():
    with pytest.raises(ValueError, match="codes for a"):
        ImageCodes(torch.zeros(10, dtype=torch.long), 3, 4)
    with pytest.raises(ValueError, match="0..16383"):
        ImageCodes(torch.tensor([16384]), 1, 1)


# ---------------------------------------------------------------------------------- text
def test_chat_and_seeds(pipe):
    a = pipe.chat("describe a red cat", gen_length=32, steps=4, temperature=1.0, seed=3)
    b = pipe.chat("describe a red cat", gen_length=32, steps=4, temperature=1.0, seed=3)
    c = pipe.chat("describe a red cat", gen_length=32, steps=4, temperature=1.0, seed=4)
    assert a.token_ids == b.token_ids != c.token_ids
    assert a.stats.forwards > 0 and a.stats.generated_tokens == len(a.token_ids)
    assert a.prompt_ids == pipe.tokenizer.encode(pipe.tokenizer.apply_chat_template([{"role": "user", "content": "describe a red cat"}]))
    omni = pipe.chat([ChatMessage("user", "what", [_codes(8, 8)])], gen_length=32, steps=4)
    assert SOI in omni.prompt_ids
    with pytest.raises(ValueError, match="no image support"):
        pipe.chat([ChatMessage("user", "what", [_codes(8, 8)])], template="chat_template")


def test_cache_modes_agree_through_the_pipeline(pipe):
    kw = dict(gen_length=64, steps=8)
    assert pipe.chat("a b c", cache="none", **kw).token_ids == pipe.chat("a b c", cache="exact", **kw).token_ids


def test_understand_returns_answer_only(pipe):
    img = _codes(8, 8, 2)
    r = pipe.understand(img, "what is in the image", gen_length=32, steps=4)
    q = pipe.tokenizer.encode("what is in the image")
    assert r.prompt_ids[-len(q):] == q
    # the result is what was generated after the question (the official code decodes from the
    # start of the question and so returns question + answer)
    assert 0 < len(r.token_ids) <= 32
    assert r.text == pipe.tokenizer.decode(r.token_ids, skip_special_tokens=True)
    assert not r.text.startswith("what is in the image")


# ---------------------------------------------------------------------------------- images
def test_generate_image_grid_and_gen_length(pipe):
    r = pipe.generate_image("a cat", image_h=256, image_w=320, steps=2, decode=False, seed=0)
    assert (r.h, r.w) == (8, 10) and r.codes.shape == (80,) and 0 <= int(r.codes.min()) and int(r.codes.max()) < 16384
    # a grid beyond the official default gen_length of 1088 codes comes out whole
    big = pipe.generate_image("a cat", image_h=1536, image_w=1024, steps=1, cfg_scale=1.0, decode=False)
    assert (big.h, big.w) == (48, 32) and big.codes.shape == (1536,)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(image_h=1000), "multiple of 32"),
        (dict(image_h=288), "grid side 9"),
        (dict(image_h=8192 * 2), "grid side 512"),
        (dict(gen_length=10), "smaller than"),
        (dict(mode="dreaming"), "mode="),
    ],
)
def test_generate_image_bad_sizes_fail_before_compute(pipe, monkeypatch, kw, msg):
    calls = []
    monkeypatch.setattr(pipe.sampler, "generate", lambda *a, **k: calls.append(1))
    args = dict(image_h=256, image_w=256, decode=False)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        pipe.generate_image("a cat", **args)
    assert not calls
    with pytest.raises(ValueError, match="non-empty"):
        pipe.generate_image("   ", decode=False)


def _fake_result(prompt, generated):
    t = torch.tensor(list(prompt) + list(generated))
    return SamplerResult(tokens=t, prompt_length=len(prompt), forwards=1, forward_tokens=1, seconds=0.0)


def test_thinking_uses_and_reports_the_grid_the_model_wrote(pipe, monkeypatch):
    real = pipe.sampler.generate
    seen = {}

    def fake(prompt_ids, cfg, **kw):
        if not cfg.image_only:  # phase 1: reasoning text, then a 10x12 header (not the requested 8x8)
            return _fake_result(prompt_ids, pipe.tokenizer.encode(" a red cat") + [SOI, _size(10), _size(12), BOI])
        seen["prompt"], seen["gen"], seen["null"] = list(prompt_ids), cfg.gen_length, list(cfg.cfg.null_ids)
        return real(prompt_ids, cfg, **kw)

    monkeypatch.setattr(pipe.sampler, "generate", fake)
    r = pipe.generate_image("a cat", image_h=256, image_w=256, mode="thinking", steps=2, decode=False)
    assert (r.h, r.w) == (10, 12) and r.codes.shape == (120,) and seen["gen"] == 120
    assert seen["prompt"][-4:] == [SOI, _size(10), _size(12), BOI] and seen["null"][-4:] == [SOI, _size(10), _size(12), BOI]
    assert r.thinking == pipe.tokenizer.decode(pipe.tokenizer.encode(" a red cat"))


def test_thinking_without_header_is_a_clear_error(pipe, monkeypatch):
    monkeypatch.setattr(pipe.sampler, "generate", lambda p, cfg, **kw: _fake_result(p, pipe.tokenizer.encode(" no image") + [EOS]))
    with pytest.raises(GenerationError, match="without an image header"):
        pipe.generate_image("a cat", image_h=256, image_w=256, mode="thinking", decode=False)


def test_edit_image_keeps_the_source_grid(pipe):
    src = _codes(8, 12, 5)
    r = pipe.edit_image(src, "make it blue", steps=2, decode=False, seed=1)
    assert (r.h, r.w) == (8, 12) and r.codes.shape == (96,)
    assert r.prompt_ids[-4:] == [SOI, _size(8), _size(12), BOI]


def test_interleaved_protocol(pipe, monkeypatch):
    real = pipe.sampler.generate
    texts = iter([pipe.tokenizer.encode(" first") + [SOI, _size(8), _size(8), BOI], pipe.tokenizer.encode(" done") + [EOS]])
    guides = []

    def fake(prompt_ids, cfg, **kw):
        if cfg.image_only:
            guides.append(cfg.cfg.kind)
            return real(prompt_ids, cfg, **kw)
        assert cfg.stop_ids == (BOI,)
        return _fake_result(prompt_ids, next(texts))

    monkeypatch.setattr(pipe.sampler, "generate", fake)
    r = pipe.generate_interleaved("show me a cat", image_h=256, image_w=256, image_steps=2, decode=False)
    assert [type(s).__name__ for s in r.segments] == ["str", "ImageResult", "str"]
    assert r.images[0].codes.shape == (64,) and guides == ["simple"]
    assert r.images[0].prompt_ids[-4:] == [SOI, _size(8), _size(8), BOI]


def test_interleaved_text_only_when_no_frames_allowed(pipe):
    r = pipe.generate_interleaved("hello", max_frames=0, text_gen_length=32, steps=4, decode=False)
    assert not r.images


def test_too_long_prompt_rejected(pipe):
    with pytest.raises(ValueError, match="exceeds the model's 8192 positions"):
        pipe.chat("cat " * 5000, gen_length=2048)


# ---------------------------------------------------------------------------------- end to end with every component
def test_end_to_end_pixels_in_pixels_out(tiny_ckpt):
    from PIL import Image

    pipe = LLaDAUni.from_pretrained(tiny_ckpt, components=("backbone", "image_tokenizer", "decoder"))
    photo = Image.new("RGB", (300, 200), (200, 30, 30))
    ans = pipe.understand(photo, "what colour", gen_length=32, steps=4)
    toks = pipe.encode_image(photo)
    assert ans.prompt_ids[4 : 4 + toks.h * toks.w] == (toks.codes + OFFSET).tolist()
    gen = pipe.generate_image("a red square", image_h=256, image_w=320, steps=2, decoder_steps=2, seed=0)
    assert gen.image.size == (320, 256)  # 32 px per code, decoded because the decoder is loaded
    again = pipe.generate_image("a red square", image_h=256, image_w=320, steps=2, decoder_steps=2, seed=0)
    assert torch.equal(gen.codes, again.codes) and (np.asarray(gen.image) == np.asarray(again.image)).all()
    # a raw source goes through the editing crop (~512² pixels, ~1,000 codes: too slow to edit here)
    src = pipe.encode_image(photo, purpose="edit")
    via = pipe._as_codes(photo, "edit")
    assert (via.h, via.w) == (src.h, src.w) and torch.equal(via.codes, src.codes) and src.h * src.w > 900
    small = _codes(8, 10, 3)
    edit = pipe.edit_image(small, "make it blue", steps=2, decoder_steps=2, seed=0)
    assert (edit.h, edit.w) == (8, 10) and edit.image.size == (320, 256)
    with pytest.raises(ValueError, match="cannot encode the image"):
        pipe.understand(b"not an image", "what")
    # raw images in chat are encoded together (two images: the several-image budget of 448²)
    big = Image.new("RGB", (800, 800), (10, 200, 10))
    two = pipe.chat("compare them", images=[big, photo], gen_length=32, steps=4)
    one = pipe.encode_image([big, photo])
    assert two.prompt_ids.count(EOI) == 2 and one[0].h * one[0].w <= (448 // 16) ** 2
