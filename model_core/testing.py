"""Small random checkpoints in the published layout, for tests, benchmarks and demos.

``make_tiny_checkpoint(path, seed=0)`` writes what the published ``inclusionAI/LLaDA2.0-Uni``
has for the backbone: ``config.json``, sharded safetensors (bf16, per-expert names) with
``model.safetensors.index.json``, and a tokenizer (``tokenizer.json``, the published
``tokenizer_config.json`` and ``special_tokens_map.json``) in which every published added token
keeps its published id. The tokenizer's ordinary vocabulary is a small byte-level BPE over a few
hundred English words, padded with unreachable filler entries so that the added tokens start at
the published id 156,891; it is built by hand, not trained, so its ids never change.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Optional

import torch

from .backbone import LLaDA2Backbone
from .checkpoint import save_backbone
from .config import BackboneConfig

__all__ = ["make_tiny_checkpoint", "tiny_tokenizer_json", "published_tokenizer_config", "TINY_WORDS"]

TINY_WORDS = (
    "the a an and or of to in on at by for with from as is are was be it this that these those "
    "what which who where when how why yes no not all some many few more most one two three four five "
    "six seven eight nine ten first second last next new old big small large little tall short long wide "
    "red orange yellow green blue purple pink brown black white gray grey gold silver dark light bright "
    "cat cats dog dogs bird birds fish horse cow sheep lion tiger bear fox rabbit mouse owl duck frog "
    "tree trees flower flowers grass leaf forest mountain mountains river lake sea ocean beach sky cloud "
    "clouds sun moon star stars rain snow wind fire water stone rock sand road street city town house "
    "houses door window room table chair bed lamp book books cup bowl plate bottle box bag car cars bus "
    "train boat plane bike ship bridge tower castle garden park field farm market shop school church "
    "man woman men women boy girl child children person people friend family face hand hands eye eyes "
    "hair head hat shirt dress coat shoe shoes glasses ball kite clock phone camera computer robot "
    "image picture photo painting drawing sketch portrait scene view style color colors shape shapes "
    "circle square triangle line lines left right top bottom middle center front back behind above below "
    "near far inside outside between under over next sitting standing running walking flying swimming "
    "holding looking wearing playing eating reading writing drawing smiling sleeping "
    "draw paint make create generate show describe edit change add remove replace turn put keep "
    "answer question think reason look see find count check refine improve better best good bad nice "
    "happy sad calm quiet loud soft hard warm cold hot sunny rainy snowy morning evening night day "
    "please can could would should will may might do does did have has had get got give take "
    "very really quite too also only just still again then there here now "
    "uncondition assistant system human text generation understanding editing "
)


def published_tokenizer_config() -> dict:
    """The published ``tokenizer_config.json`` (shipped with the package as data)."""
    raw = resources.files("lladauni.model_core").joinpath("data/tokenizer_config.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level alphabet: each byte maps to one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_tokenizer_json(config: Optional[dict] = None) -> dict:
    """A ``tokenizer.json`` with a hand-built byte-level BPE and the published added tokens."""
    cfg = config or published_tokenizer_config()
    added = sorted(((int(i), t) for i, t in cfg["added_tokens_decoder"].items()), key=lambda x: x[0])
    first_added = added[0][0]
    if [i for i, _ in added] != list(range(first_added, first_added + len(added))):
        raise ValueError("the added tokens' ids are not contiguous; tokenizers cannot place them")

    byte_map = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for b in range(256):
        vocab.setdefault(byte_map[b], len(vocab))
    merges: list[list[str]] = []
    for word in dict.fromkeys(TINY_WORDS.split()):
        for piece in (word, "Ġ" + word):
            cur = piece[0]
            for ch in piece[1:]:
                merged = cur + ch
                if merged not in vocab:
                    vocab[merged] = len(vocab)
                    merges.append([cur, ch])
                cur = merged
    if len(vocab) > first_added:
        raise ValueError("tiny vocabulary larger than the id space below the added tokens")
    # Filler entries no merge can produce keep the added tokens at their published ids.
    for i in range(len(vocab), first_added):
        vocab[f"<|tiny_unused_{i}|>"] = i

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t["content"],
                "single_word": t.get("single_word", False),
                "lstrip": t.get("lstrip", False),
                "rstrip": t.get("rstrip", False),
                "normalized": t.get("normalized", False),
                "special": t.get("special", False),
            }
            for i, t in added
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def make_tiny_checkpoint(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    config: Optional[BackboneConfig] = None,
    dtype: torch.dtype = torch.bfloat16,
    num_shards: int = 2,
    with_image_tokenizer: bool = True,
    with_decoder: bool = True,
) -> Path:
    """Write a random backbone checkpoint in the published layout and return its directory.

    config defaults to ``BackboneConfig.tiny()``; weights are drawn from ``seed`` and stored in
    ``dtype`` (bf16, as published) across at least ``num_shards`` shards. ``with_image_tokenizer``
    also writes a tiny ``image_tokenizer/`` (config, preprocessor config, weights); ``with_decoder``
    writes tiny ``decoder/``, ``decoder-turbo/``, ``vae/`` and ``image_tokenizer/sigvq_embedding.pt``
    (the VAE needs diffusers).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = config or BackboneConfig.tiny()
    gen = torch.Generator().manual_seed(seed)
    model = LLaDA2Backbone(config)
    model.init_weights(gen)
    total = sum(t.numel() for t in model.state_dict().values()) * torch.tensor([], dtype=dtype).element_size()
    save_backbone(model, out, max_shard_bytes=max(1, total // max(1, num_shards) + 1), dtype=dtype)

    tok_cfg = published_tokenizer_config()
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with resources.as_file(resources.files("lladauni.model_core").joinpath("data/special_tokens_map.json")) as src:
        shutil.copyfile(src, out / "special_tokens_map.json")
    (out / "tokenizer.json").write_text(json.dumps(tiny_tokenizer_json(tok_cfg), ensure_ascii=False), encoding="utf-8")
    if with_image_tokenizer:
        from .testing_image import write_tiny_image_tokenizer

        write_tiny_image_tokenizer(out, seed=seed)
    if with_decoder:
        from .decoder.testing import write_tiny_decoder

        write_tiny_decoder(out, seed=seed)
    return out
