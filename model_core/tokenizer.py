"""The text tokenizer of a checkpoint, with every special id read from the checkpoint's files.

Wraps transformers' ``PreTrainedTokenizerFast`` over ``tokenizer.json`` +
``tokenizer_config.json``. Special tokens are looked up by their text in the checkpoint's
vocabulary (the ids are never literals here) and each must be exactly one token. Image grid
sizes are written as ``<|reserved_token_N|>``; only the N that exist in the vocabulary are
usable (MODEL_SPEC §12: even N from 8 to 34 and every N from 36 to 255 in the published one).

Prompts are built from segments tokenized separately, as the official code does, so no BPE
merge crosses a segment boundary. ``<uncondition>`` is ordinary text, not a special token.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["TextTokenizer", "SpecialTokens", "TokenizerError", "lone_surrogate", "require_utf8"]

_SIZE_TOKEN = re.compile(r"^<\|reserved_token_(\d+)\|>$")


def _summarize_sides(sides: Any) -> str:
    """A compact list of grid sides: runs of 3+ consecutive sides as ``a..b``, runs of 3+ sides
    two apart as ``a..b (even)``/``(odd)``, the rest one by one (the published vocabulary gives
    ``8..34 (even), 36..255``)."""
    ns = sorted(set(sides))
    parts: list[str] = []
    i = 0
    while i < len(ns):
        j = i
        step = ns[i + 1] - ns[i] if i + 1 < len(ns) else 0
        if step in (1, 2):
            while j + 1 < len(ns) and ns[j + 1] - ns[j] == step:
                # leave a side that starts a run of 3+ consecutive sides to that run
                if step == 2 and j + 3 < len(ns) and ns[j + 3] - ns[j + 1] == 2:
                    break
                j += 1
        if j - i >= 2:
            kind = "" if step == 1 else (" (even)" if ns[i] % 2 == 0 else " (odd)")
            parts.append(f"{ns[i]}..{ns[j]}{kind}")
            i = j + 1
        else:
            parts.append(str(ns[i]))
            i += 1
    return ", ".join(parts)


def lone_surrogate(text: str) -> Optional[str]:
    """Where ``text`` cannot be encoded, or None: its first lone surrogate and index, e.g.
    ``'\\ud800' at index 2``, or ``byte b'\\xff' at index 2`` for a byte that was not UTF-8 (Python
    keeps such bytes of a command line or file name as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        ch = text[exc.start]
        what = f"byte {ch.encode('utf-8', 'surrogateescape')!r}" if "\udc80" <= ch <= "\udcff" else ascii(ch)
        return f"{what} at index {exc.start}"
    return None


def require_utf8(text: str, what: str) -> None:
    """ValueError naming ``what`` when ``text`` cannot be encoded (see ``lone_surrogate``)."""
    where = lone_surrogate(text)
    if where is not None:
        raise ValueError(f"{what}: not valid UTF-8 text ({where}); pass the text in UTF-8")


class TokenizerError(ValueError):
    """The checkpoint's tokenizer files are missing, corrupt or lack a token we need."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens the pipelines use, read from the checkpoint."""

    bos: int  # <|startoftext|> (never added automatically)
    eos: int  # <|endoftext|>, also the pad id
    pad: int
    mask: int  # <|mask|>, the diffusion mask
    image_start: int  # <|image|>
    image_end: int  # <|/image|>
    boi: int  # <boi>, begins the image codes after the size header
    role_open: int  # <role>
    role_close: int  # </role>
    role_end: int  # <|role_end|>
    think_open: int  # <think>
    think_close: int  # </think>


# field name -> where the token's text comes from: a tokenizer_config key, or a fixed text
_SPECIALS: dict[str, tuple[Optional[str], str]] = {
    "bos": ("bos_token", "<|startoftext|>"),
    "eos": ("eos_token", "<|endoftext|>"),
    "pad": ("pad_token", "<|endoftext|>"),
    "mask": ("mask_token", "<|mask|>"),
    "image_start": (None, "<|image|>"),
    "image_end": (None, "<|/image|>"),
    "boi": (None, "<boi>"),
    "role_open": (None, "<role>"),
    "role_close": (None, "</role>"),
    "role_end": (None, "<|role_end|>"),
    "think_open": (None, "<think>"),
    "think_close": (None, "</think>"),
}

Segment = Union[str, Sequence[int]]


class TextTokenizer:
    """Text <-> ids for one checkpoint. ``.hf`` is the underlying transformers tokenizer."""

    def __init__(self, hf_tokenizer: Any, source: str = "<memory>") -> None:
        self.hf = hf_tokenizer
        self.source = source
        vocab: dict[str, int] = hf_tokenizer.get_vocab()
        ids = {}
        for field_name, (config_key, fallback) in _SPECIALS.items():
            text = fallback
            if config_key is not None:
                configured = getattr(hf_tokenizer, config_key, None)
                text = str(configured) if configured else fallback
            if text not in vocab:
                raise TokenizerError(f"{source}: the tokenizer has no {text!r} token (needed as {field_name})")
            ids[field_name] = vocab[text]
            encoded = self.encode(text)
            if encoded != [vocab[text]]:
                raise TokenizerError(f"{source}: {text!r} does not encode to one token (got {encoded})")
        self.special = SpecialTokens(**ids)
        self._size_ids = {
            int(m.group(1)): i for tok, i in vocab.items() if (m := _SIZE_TOKEN.match(tok)) is not None
        }
        self.image_code0 = vocab.get("<IMAGE0>")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> "TextTokenizer":
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, ``special_tokens_map.json``) from a checkpoint dir."""
        ckpt = Path(path)
        if not (ckpt / "tokenizer.json").is_file():
            raise TokenizerError(f"{ckpt}: no tokenizer.json")
        from transformers import PreTrainedTokenizerFast

        try:
            hf = PreTrainedTokenizerFast.from_pretrained(str(ckpt))
        except Exception as exc:
            raise TokenizerError(f"{ckpt}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
        return cls(hf, str(ckpt))

    # ------------------------------------------------------------------ text <-> ids
    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with nothing added (no BOS/EOS)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        where = lone_surrogate(text)
        if where is not None:  # the Rust tokenizer would fail with an opaque TypeError
            raise ValueError(f"cannot encode text with a lone surrogate ({where} of {len(text)} characters), which is "
                             "not valid Unicode; pass UTF-8-encodable text (e.g. decode input bytes with errors='replace')")
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_segments(self, segments: Sequence[Segment]) -> list[int]:
        """Concatenate segments, each string tokenized on its own; id lists are taken as they are."""
        out: list[int] = []
        for seg in segments:
            if isinstance(seg, str):
                out.extend(self.encode(seg))
            else:
                out.extend(int(i) for i in seg)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, text: str) -> int:
        """The id of a single-token text, or ValueError naming it."""
        vocab = self.hf.get_vocab()
        if text not in vocab:
            raise ValueError(f"{text!r} is not a token of this tokenizer")
        return vocab[text]

    # ------------------------------------------------------------------ image headers
    @property
    def size_token_ids(self) -> dict[int, int]:
        """Grid side N -> id of ``<|reserved_token_N|>``, for every N the vocabulary has."""
        return dict(self._size_ids)

    def size_token_id(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"grid side must be an int, got {type(n).__name__}")
        try:
            return self._size_ids[n]
        except KeyError:
            have = _summarize_sides(self._size_ids)
            raise ValueError(
                f"grid side {n} has no size token <|reserved_token_{n}|> in this tokenizer; "
                + (f"this tokenizer has size tokens for sides {have}" if have else "this tokenizer has no size tokens")
            ) from None

    def image_header(self, h: int, w: int) -> list[int]:
        """``<|image|> <|reserved_token_h|> <|reserved_token_w|> <boi>`` for a grid of h x w codes."""
        return [self.special.image_start, self.size_token_id(h), self.size_token_id(w), self.special.boi]

    # ------------------------------------------------------------------ chat template
    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render the checkpoint's chat template (jinja2 sandbox, via transformers)."""
        return self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
