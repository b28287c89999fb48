"""Host wrapper of the block-masked attention kernel, and the backend adapter.

``block_attention`` takes plain tensors; ``attention`` has the signature of a
``model_core`` attention backend (q, k, v, mask, scale), reading the mask's block vectors
without building a dense mask and without host syncs (CUDA-graph safe). ``flash_attention``
uses flash-attn for masks that hide nothing and this kernel otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from .._triton import has_module, load_config, require_triton

__all__ = ["block_attention", "attention", "flash_attention", "HAS_FLASH_ATTN", "ACT_DTYPES"]

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
HAS_FLASH_ATTN: bool = has_module("flash_attn")
_HERE = Path(__file__).parent
_INT_DTYPES = (torch.int32, torch.int64)


def _check(q, k, v, query_block, key_block, key_valid) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"expected q (B,Hq,Q,D), k and v (B,Hkv,S,D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Hq, Q, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if Hq % k.shape[1]:
        raise ValueError(f"query heads {Hq} not a multiple of key/value heads {k.shape[1]}")
    if q.dtype not in ACT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype}: one of {ACT_DTYPES}, all equal")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"head_dim={D}: must be a power of two in [16, 256]")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(3) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (strides {t.stride()})")
    S = k.shape[2]
    if query_block.shape != (Q,) or key_block.shape != (S,):
        raise ValueError(f"query_block {tuple(query_block.shape)} / key_block {tuple(key_block.shape)}: expected ({Q},) / ({S},)")
    if query_block.dtype not in _INT_DTYPES or key_block.dtype not in _INT_DTYPES:
        raise ValueError(f"block ids must be int32/int64, got {query_block.dtype}/{key_block.dtype}")
    if key_valid is not None:
        if key_valid.dim() != 2 or key_valid.shape[1] != S or key_valid.shape[0] not in (1, B):
            raise ValueError(f"key_valid has shape {tuple(key_valid.shape)}; expected (1 or {B}, {S})")
        if key_valid.dtype != torch.bool:
            raise ValueError(f"key_valid dtype {key_valid.dtype}: expected bool")
    devs = {t.device for t in (q, k, v, query_block, key_block) + (() if key_valid is None else (key_valid,))}
    if len(devs) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devs))}")


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_block: torch.Tensor,
    key_block: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    scale: float,
    *,
    config: Optional[dict[str, Any]] = None,
) -> torch.Tensor:
    """Masked GQA attention: q (B,Hq,Q,D), k/v (B,Hkv,S,D) -> (B,Hq,Q,D) in q's dtype.

    Query i sees key j iff key_block[j] <= query_block[i] and key_valid[b, j]; rows that see
    nothing are zeros. The result is a (B,Hq,Q,D) view of (B,Q,Hq,D) storage, so the caller's
    ``transpose(1, 2).reshape(B, Q, Hq*D)`` costs no copy.
    """
    require_triton(q, k, v)
    _check(q, k, v, query_block, key_block, key_valid)
    from . import kernel

    B, Hq, Q, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    out = torch.empty(B, Q, Hq, D, dtype=q.dtype, device=q.device)
    o = out.transpose(1, 2)  # (B, Hq, Q, D) view
    if Q == 0:
        return o
    cfg = dict(config) if config else load_config(_HERE, q.device, "attention_fwd", G * Q)
    launch = {n: cfg.pop(n) for n in ("num_warps", "num_stages") if n in cfg}
    valid = key_valid.view(torch.uint8) if key_valid is not None else query_block
    grid = (-(-(G * Q) // cfg["BLOCK_M"]), B * Hkv)
    kernel.attention_fwd_kernel[grid](
        q, k, v, o, query_block, key_block, valid,
        Q, S, Hkv, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        (valid.stride(0) if key_valid is not None and key_valid.shape[0] > 1 else 0),
        G=G, HAS_VALID=key_valid is not None, ACC_IEEE=q.dtype == torch.float32, D=D, **cfg, **launch,
    )
    return o


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> torch.Tensor:
    """``model_core`` attention backend: ``mask`` is an ``AttentionMask`` (read by attribute)."""
    kv = mask.key_valid
    if kv is not None and not kv.is_contiguous():
        kv = kv.contiguous()
    return block_attention(q, k, v, mask.query_block, mask.key_block, kv, scale)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> torch.Tensor:
    """flash-attn (non-causal, GQA) when the mask hides nothing, the Triton kernel otherwise.

    ``mask.sees_everything()`` costs one host sync per mask (cached on it, so once per forward),
    which rules this backend out of CUDA-graph capture; ``attention`` has no such sync.
    """
    if HAS_FLASH_ATTN and q.is_cuda and q.dtype != torch.float32 and mask.sees_everything():
        from flash_attn import flash_attn_func

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=False)
        return out.transpose(1, 2)  # (B, Q, Hq, D) -> (B, Hq, Q, D) view
    return attention(q, k, v, mask, scale)
