"""A compact text tokenizer for small models, in the published file layout.

``build_compact_tokenizer(texts, out_dir, num_codes=...)`` trains a byte-level BPE (the published
tokenizer's kind) on ``texts`` with the ``tokenizers`` library and writes ``tokenizer.json``,
``tokenizer_config.json`` and ``special_tokens_map.json``. Ids are laid out as

    [0, bpe)                 byte-level BPE pieces (any text encodes; unknown words fall back to bytes)
    [bpe, bpe + S)           the special tokens every pipeline needs (mask, roles, image markers, ...)
    [.., offset)             size tokens ``<|reserved_token_N|>`` for the grid sides the model knows
    [offset, offset + K)     ``<IMAGE0>`` .. ``<IMAGE{K-1}>``: image codes (offset = image_token_offset)

so a 32-code model has a vocabulary of about a thousand ids instead of the published 173,568, and
every id the library uses is read from these files (``TextTokenizer`` looks tokens up by text).
The chat template is the published one. Training is deterministic for a given list of texts.

``plural_stems`` splits the plural "s" off those words before the BPE sees them, so "circles" encodes
as "circle" + "s": a BPE trained on a small world's texts otherwise learns " circles" as one token that
only counting questions use, and a model never links it to the " circle" its captions ground.
"""

from __future__ import annotations

import gzip
import json
import os
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["SPECIAL_TOKENS", "build_compact_tokenizer", "compact_vocab_layout"]

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mask|>",
    "<|image|>",
    "<|/image|>",
    "<boi>",
    "<role>",
    "</role>",
    "<|role_end|>",
    "<think>",
    "</think>",
)


def _published_template() -> str:
    raw = resources.files("lladauni.model_core").joinpath("data/tokenizer_config.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))["chat_template"]


def compact_vocab_layout(bpe_size: int, sizes: Sequence[int], num_codes: int) -> dict[str, int]:
    """Where each block of ids starts: {'special', 'sizes', 'image_token_offset', 'vocab_size'}."""
    special = bpe_size
    size0 = special + len(SPECIAL_TOKENS)
    offset = size0 + len(sizes)
    return {"special": special, "sizes": size0, "image_token_offset": offset, "vocab_size": offset + num_codes}


def build_compact_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    num_codes: int,
    grid_sides: Sequence[int] = (3,),
    bpe_vocab_size: int = 1024,
    model_max_length: int = 8192,
    plural_stems: Sequence[str] = (),
) -> dict[str, int]:
    """Train the BPE on ``texts``, write the three tokenizer files into ``out_dir`` and return the
    id layout (:func:`compact_vocab_layout`) with the actual BPE size. ``plural_stems``: words whose
    plural (stem + "s") is pre-split into the stem and "s" (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    stems = [str(w) for w in plural_stems]
    bad = [w for w in stems if not w.isalpha() or not w.isascii()]
    if bad:
        raise ValueError(f"plural_stems {bad}: each must be a word of ASCII letters")
    if num_codes <= 0:
        raise ValueError(f"num_codes={num_codes}: must be > 0")
    if not grid_sides or any(int(s) <= 0 for s in grid_sides):
        raise ValueError(f"grid_sides={list(grid_sides)}: need at least one positive side")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if stems:
        # a look-behind with top-level alternatives of different lengths (allowed by Oniguruma)
        plural = Regex("(?<=" + "|".join(sorted(set(stems), key=lambda w: (-len(w), w))) + r")s\b")
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(plural, behavior="isolated"), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bpe = tok.get_vocab_size()
    sides = sorted({int(s) for s in grid_sides})
    layout = compact_vocab_layout(bpe, sides, num_codes)
    added = list(SPECIAL_TOKENS) + [f"<|reserved_token_{s}|>" for s in sides] + [f"<IMAGE{i}>" for i in range(num_codes)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    # The ids must be exactly the layout (tokenizers appends added tokens after the model vocab).
    for i, t in enumerate(added):
        got = tok.token_to_id(t)
        if got != bpe + i:
            raise RuntimeError(f"added token {t!r} got id {got}, expected {bpe + i}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        **specials,
        "chat_template": _published_template(),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "left",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    smap = {k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False} for k, v in specials.items()}
    (out / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n", encoding="utf-8")
    return layout
