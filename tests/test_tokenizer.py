from __future__ import annotations

import json

import pytest

from lladauni.model_core import TextTokenizer, TokenizerError
from lladauni.model_core.testing import published_tokenizer_config


@pytest.fixture(scope="module")
def tok(tiny_ckpt):
    return TextTokenizer.from_pretrained(tiny_ckpt)


def test_every_published_added_token_keeps_its_id(tok):
    decoder = published_tokenizer_config()["added_tokens_decoder"]
    assert len(decoder) == 16_677
    vocab = tok.hf.get_vocab()
    for i, t in decoder.items():
        assert vocab[t["content"]] == int(i), t["content"]
    assert len(tok) == 173_568


def test_special_ids_come_from_the_files(tok, tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "tokenizer_config.json").read_text())
    by_text = {t["content"]: int(i) for i, t in cfg["added_tokens_decoder"].items()}
    s = tok.special
    assert s.mask == by_text[cfg["mask_token"]] and s.eos == by_text[cfg["eos_token"]] == s.pad
    assert s.bos == by_text[cfg["bos_token"]]
    assert (s.image_start, s.image_end, s.boi) == (by_text["<|image|>"], by_text["<|/image|>"], by_text["<boi>"])
    assert (s.role_open, s.role_close, s.role_end) == (by_text["<role>"], by_text["</role>"], by_text["<|role_end|>"])
    # the published numbers (MODEL_SPEC §12), as a cross-check of the files
    assert (s.mask, s.eos, s.image_start, s.image_end, s.boi, s.role_open) == (156895, 156892, 156901, 156902, 156904, 157151)
    assert tok.image_code0 == 157184


def test_size_tokens(tok):
    sizes = tok.size_token_ids
    expected = set(range(8, 35, 2)) | set(range(36, 256))
    assert set(sizes) == expected and len(sizes) == 234
    assert all(sizes[n] == 156895 + n for n in sizes)
    assert tok.image_header(32, 48) == [156901, 156895 + 32, 156895 + 48, 156904]
    for bad in (9, 7, 6, 0, 256, 33):
        with pytest.raises(ValueError, match=f"grid side {bad} has no size token"):
            tok.size_token_id(bad)
    with pytest.raises(TypeError):
        tok.size_token_id(8.0)
    # the text of a missing size token is not one token
    assert len(tok.encode("<|reserved_token_9|>")) > 1


def test_uncondition_is_ordinary_text(tok):
    ids = tok.encode("<uncondition>")
    assert len(ids) > 1 and all(i < 156891 for i in ids)


def test_segments_are_tokenized_separately(tok):
    whole = tok.encode(" the cat")
    split = tok.encode_segments([" the", " cat"])
    assert split == tok.encode(" the") + tok.encode(" cat")
    assert tok.encode_segments(["<role>HUMAN</role>", [157184, 157185], " red"]) == (
        tok.encode("<role>HUMAN</role>") + [157184, 157185] + tok.encode(" red")
    )
    assert whole == tok.encode(" the") + tok.encode(" cat")  # word boundaries fall between pieces here
    assert tok.encode("the") != tok.encode(" the")  # byte-level BPE: a leading space is a different token


def test_encode_adds_nothing_and_decodes_back(tok):
    text = "a red cat sitting on a blue chair"
    ids = tok.encode(text)
    assert tok.special.bos not in ids and tok.special.eos not in ids
    assert tok.decode(ids) == text
    with_special = [tok.special.image_start] + ids + [tok.special.eos]
    assert tok.decode(with_special, skip_special_tokens=True) == text
    with pytest.raises(TypeError):
        tok.encode(["not", "a", "string"])


def test_chat_template_renders_in_sandbox(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "draw a cat"}])
    assert text.startswith("<role>SYSTEM</role>detailed thinking off<|role_end|>")
    assert "<role>HUMAN</role>draw a cat<|role_end|>" in text and text.endswith("<role>ASSISTANT</role>")


def test_transformers_autotokenizer_loads_it_with_same_ids(tiny_ckpt, tok):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tiny_ckpt))
    assert auto.mask_token_id == tok.special.mask and auto.eos_token_id == tok.special.eos
    text = "<|image|><|reserved_token_16|><|reserved_token_16|><boi> what is in the image"
    assert auto(text, add_special_tokens=False).input_ids == tok.encode(text)


def test_tokenizer_file_errors(tiny_ckpt_copy):
    (tiny_ckpt_copy / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot load the tokenizer"):
        TextTokenizer.from_pretrained(tiny_ckpt_copy)
    (tiny_ckpt_copy / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        TextTokenizer.from_pretrained(tiny_ckpt_copy)


def test_missing_special_token_is_named(tiny_ckpt_copy):
    data = json.loads((tiny_ckpt_copy / "tokenizer.json").read_text())
    for t in data["added_tokens"]:
        if t["content"] == "<boi>":
            t["content"] = "<boi_renamed>"
    (tiny_ckpt_copy / "tokenizer.json").write_text(json.dumps(data))
    cfg = json.loads((tiny_ckpt_copy / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"]["156904"]["content"] = "<boi_renamed>"
    (tiny_ckpt_copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="no '<boi>' token"):
        TextTokenizer.from_pretrained(tiny_ckpt_copy)
