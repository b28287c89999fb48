"""Attention mask model and the attention backends (eager reference, torch SDPA).

The backbone attends block-causally: the sequence is cut into blocks of ``block_size``
positions counted from position 0 (prompt included); a query sees every key whose block is not
after its own, so attention is bidirectional inside a block. The same rule covers a denoising
step over cached keys (the active block sees the whole cached prefix and itself) and
left-padded classifier-free-guidance rows (``key_valid`` hides the padding).

``AttentionMask`` stores that rule as two small vectors of block ids plus an optional (B, S)
validity mask. A backend that needs a dense boolean mask asks for ``mask.dense()`` once; it is
cached on the mask object, so one forward pass builds it once for all layers, and a step whose
queries see every key needs none at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..kernel_choice import kernel_module, kernel_serves

__all__ = [
    "AttentionMask",
    "DenseMask",
    "eager_attention",
    "sdpa_attention",
    "register_attention_backend",
    "get_attention_backend",
    "attention_backends",
    "choose_attention",
    "triton_attention",
    "flash_attention",
]


class DenseMask(NamedTuple):
    """Dense form of an AttentionMask, built once and shared by all layers of a forward."""

    allowed: torch.Tensor  # (B|1, 1, Q, S) bool
    has_key: torch.Tensor  # (B|1, 1, Q, 1) bool: False for query rows with no visible key
    has_empty_rows: bool
    safe_allowed: torch.Tensor  # ``allowed`` with empty rows opened up (no NaN in softmax)


@dataclass(eq=False)
class AttentionMask:
    """Query i may attend key j iff ``key_block[j] <= query_block[i]`` and ``key_valid[b, j]``.

    query_block: (Q,) int64 block id of each query.
    key_block:   (S,) int64 block id of each key (cached keys first, then the new ones).
    key_valid:   optional (B, S) bool, False for keys that no query may see (left padding).
    """

    query_block: torch.Tensor
    key_block: torch.Tensor
    key_valid: Optional[torch.Tensor] = None
    _dense: Optional[DenseMask] = field(default=None, repr=False)
    _sees_everything: Optional[bool] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.query_block.dim() != 1 or self.key_block.dim() != 1:
            raise ValueError("query_block and key_block must be 1-D")
        if self.key_valid is not None:
            if self.key_valid.dim() != 2 or self.key_valid.shape[1] != self.key_block.shape[0]:
                raise ValueError(
                    f"key_valid has shape {tuple(self.key_valid.shape)}; expected (B, {self.key_block.shape[0]})"
                )
            self.key_valid = self.key_valid.to(torch.bool)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def block_causal(
        cls,
        key_len: int,
        block_size: int,
        *,
        query_start: int = 0,
        key_valid: Optional[torch.Tensor] = None,
        device: torch.device | str | None = None,
    ) -> "AttentionMask":
        """Whole-window block-causal mask: keys are positions 0..key_len-1 of the window and the
        queries are positions query_start..key_len-1 of it."""
        if block_size <= 0:
            raise ValueError(f"block_size={block_size}: must be > 0")
        if not 0 <= query_start < key_len:
            raise ValueError(f"query_start={query_start}: must be in [0, key_len={key_len})")
        pos = torch.arange(key_len, device=device)
        blocks = torch.div(pos, block_size, rounding_mode="floor")
        return cls(blocks[query_start:], blocks, key_valid)

    @classmethod
    def prefix_and_block(
        cls,
        prefix_len: int,
        block_len: int,
        *,
        key_valid: Optional[torch.Tensor] = None,
        device: torch.device | str | None = None,
    ) -> "AttentionMask":
        """An active block over a cached prefix: every query sees all (valid) prefix keys and the
        whole active block, whatever the prefix positions were (also after SPRINT pruning)."""
        kb = torch.cat(
            (torch.zeros(prefix_len, dtype=torch.long, device=device), torch.ones(block_len, dtype=torch.long, device=device))
        )
        qb = torch.ones(block_len, dtype=torch.long, device=device)
        return cls(qb, kb, key_valid)

    @classmethod
    def static_block(
        cls,
        start: torch.Tensor,
        block_len: int,
        key_positions: torch.Tensor,
        *,
        row_valid: Optional[torch.Tensor] = None,
    ) -> "AttentionMask":
        """An active block over a preallocated (static) cache: the queries are buffer positions
        ``start .. start+block_len-1`` (``start`` a 0-dim device tensor), the keys the whole
        buffer (``key_positions`` = arange(capacity)); a query sees every (``row_valid``) key
        before the end of its block, so this equals ``prefix_and_block(start, block_len)`` on
        the live part of the buffer. Built on the device with its dense form filled in: no
        host sync anywhere, so a step that uses it can be captured in a CUDA graph."""
        key_block = (key_positions >= start).long()
        live = key_positions < start + block_len  # (C,)
        key_valid = live.unsqueeze(0) if row_valid is None else row_valid & live  # (R|1, C)
        allowed = key_valid[:, None, None, :]
        has_key = torch.ones(allowed.shape[0], 1, 1, 1, dtype=torch.bool, device=allowed.device)
        query_block = torch.ones(block_len, dtype=torch.long, device=key_positions.device)
        mask = cls(query_block, key_block, key_valid)
        mask._dense = DenseMask(allowed, has_key, False, allowed)  # every query sees its own block
        mask._sees_everything = False
        return mask

    @classmethod
    def full(
        cls,
        query_len: int,
        key_len: int,
        *,
        key_valid: Optional[torch.Tensor] = None,
        device: torch.device | str | None = None,
    ) -> "AttentionMask":
        """Every query sees every (valid) key: what the official forward does when it is given
        no attention mask. Generation never uses it; it is here for side-by-side comparisons."""
        return cls(
            torch.zeros(query_len, dtype=torch.long, device=device),
            torch.zeros(key_len, dtype=torch.long, device=device),
            key_valid,
        )

    # ------------------------------------------------------------------ queries
    @property
    def prebuilt(self) -> bool:
        """Whether the dense form and ``sees_everything`` are already known (no host sync to use
        the mask with SDPA or eager attention)."""
        return self._dense is not None and self._sees_everything is not None

    @property
    def num_queries(self) -> int:
        return self.query_block.shape[0]

    @property
    def num_keys(self) -> int:
        return self.key_block.shape[0]

    def sees_everything(self) -> bool:
        """True when every query may attend every key (no mask needed). Cached."""
        if self._sees_everything is None:
            valid = self.key_valid is None or bool(self.key_valid.all())
            self._sees_everything = valid and bool(self.key_block.max() <= self.query_block.min())
        return self._sees_everything

    def dense(self) -> DenseMask:
        """The dense boolean form; built on first use and cached on this mask."""
        if self._dense is None:
            allowed = self.key_block[None, :] <= self.query_block[:, None]  # (Q, S)
            allowed = allowed[None, None]  # (1, 1, Q, S)
            if self.key_valid is not None:
                allowed = allowed & self.key_valid[:, None, None, :]  # (B, 1, Q, S)
            has_key = allowed.any(dim=-1, keepdim=True)  # (B|1, 1, Q, 1)
            empty = not bool(has_key.all())
            self._dense = DenseMask(allowed, has_key, empty, allowed | ~has_key if empty else allowed)
        return self._dense

    def to(self, device: torch.device | str) -> "AttentionMask":
        kv = None if self.key_valid is None else self.key_valid.to(device)
        return AttentionMask(self.query_block.to(device), self.key_block.to(device), kv)


STEP_QUERIES = 64  # at most this many queries: a denoising step, not a prefill

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMask, float], torch.Tensor]


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> int:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"expected q (B,Hq,Q,D), k and v (B,Hkv,S,D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} not a multiple of key/value heads {k.shape[1]}")
    if q.shape[2] != mask.num_queries or k.shape[2] != mask.num_keys:
        raise ValueError(
            f"mask covers {mask.num_queries} queries x {mask.num_keys} keys, tensors have {q.shape[2]} x {k.shape[2]}"
        )
    return q.shape[1] // k.shape[1]


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float) -> torch.Tensor:
    """Plain reference in fp32: q (B,Hq,Q,D), k/v (B,Hkv,S,D) -> (B,Hq,Q,D) in q's dtype."""
    groups = _check_shapes(q, k, v, mask)
    k32 = _repeat_kv(k.float(), groups)  # (B, Hq, S, D)
    v32 = _repeat_kv(v.float(), groups)
    scores = torch.matmul(q.float(), k32.transpose(-1, -2)) * scale  # (B, Hq, Q, S)
    dm = mask.dense()
    scores = scores.masked_fill(~dm.safe_allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dm.has_empty_rows:
        probs = probs.masked_fill(~dm.has_key, 0.0)
    return torch.matmul(probs, v32).to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float) -> torch.Tensor:
    """torch scaled_dot_product_attention with GQA; fully masked query rows give zeros."""
    groups = _check_shapes(q, k, v, mask)
    if mask.sees_everything():
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=groups > 1)
    dm = mask.dense()
    # Rows with no visible key attend to everything (``safe_allowed``) so that no NaN appears,
    # and are then zeroed.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=dm.safe_allowed, scale=scale, enable_gqa=groups > 1)
    if dm.has_empty_rows:
        out = out.masked_fill(~dm.has_key, 0.0)
    return out


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float) -> torch.Tensor:
    """The Triton block-masked kernel (``lladauni.kernels.attention``): reads the mask's block
    vectors, no dense mask, no host sync (CUDA-graph safe). Raises where the kernel does not
    serve the call; ``auto`` asks first and uses SDPA instead."""
    op = kernel_module("attention")
    if op is None:
        raise RuntimeError("the attention kernel failed to import (see the warning above); use attn='sdpa'")
    kv = mask.key_valid
    if kv is not None and not kv.is_contiguous():
        kv = kv.contiguous()
    return op.block_attention(q, k, v, mask.query_block, mask.key_block, kv, scale)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float) -> torch.Tensor:
    """flash-attn when the mask hides nothing and flash-attn serves the call, the Triton kernel
    otherwise. ``mask.sees_everything()`` costs one host sync per mask (cached on it, so once per
    forward), which rules this backend out of CUDA-graph capture; ``triton`` has no such sync."""
    op = kernel_module("attention")
    if op is not None and op.flash_unsupported(q, k, v) is None and mask.sees_everything():
        return op.flash_attention(q, k, v, scale)
    return triton_attention(q, k, v, mask, scale)


_BACKENDS: dict[str, AttentionFn] = {"eager": eager_attention, "sdpa": sdpa_attention}


def _add_kernel_backends() -> None:
    """List ``triton`` (and ``flash`` with flash-attn) once the kernels import and Triton is here."""
    op = kernel_module("attention")
    if op is None or not op.HAS_TRITON:
        return
    _BACKENDS.setdefault("triton", triton_attention)
    if op.HAS_FLASH_ATTN:
        _BACKENDS.setdefault("flash", flash_attention)


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Add (or replace) an attention backend under ``name`` (any callable with the backend signature)."""
    if name == "auto":
        raise ValueError("'auto' is reserved")
    _BACKENDS[name] = fn


def attention_backends() -> list[str]:
    _add_kernel_backends()
    return sorted(_BACKENDS)


def choose_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, *, kernel_device: Optional[bool] = None
) -> tuple[str, AttentionFn]:
    """The backend ``auto`` runs for this call, by capability: the Triton kernel when the
    tensors are on CUDA (``kernel_device``, default ``q.is_cuda``) and the kernel serves their
    shape, dtype and strides; SDPA otherwise, and also for a denoising step (at most
    ``STEP_QUERIES`` queries) whose mask comes with its dense form (``AttentionMask.static_block``):
    SDPA then needs no host sync either, and the H200 run measured it faster than the kernel at
    that shape (0.156 vs 0.280 ms at batch 1). Metadata only: no host sync."""
    on_device = q.is_cuda if kernel_device is None else kernel_device
    if on_device and mask.prebuilt and q.shape[2] <= STEP_QUERIES:
        # a denoising step over a static cache: its dense mask exists (no sync to build it), and
        # SDPA measured 1.8x (batch 1) and 2.2x (batch 2) faster than the kernel at this shape
        return "sdpa", sdpa_attention
    if kernel_serves("attention", on_device, q, k, v, mask.query_block, mask.key_block, mask.key_valid):
        return "triton", triton_attention
    return "sdpa", sdpa_attention


def _auto_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, scale: float) -> torch.Tensor:
    """Decided per call, so a model moved to the GPU after it was built still gets the kernel,
    and a shape the kernel does not serve still runs."""
    return choose_attention(q, k, v, mask)[1](q, k, v, mask, scale)


def get_attention_backend(name: str) -> AttentionFn:
    """Resolve a backend name; ``auto`` chooses per call (``choose_attention``)."""
    if name == "auto":
        return _auto_attention
    _add_kernel_backends()
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {['auto'] + attention_backends()}") from None
