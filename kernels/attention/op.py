"""Host wrapper of the block-masked attention kernel.

Everything here takes plain tensors. ``block_attention`` reads the mask as two block-id vectors
and an optional key-validity matrix, without building a dense mask and without host syncs
(CUDA-graph safe). ``unsupported`` says, without launching anything or syncing, why a call
would be refused (None when the kernel serves it), so a caller can choose another path per
call. ``flash_attention`` runs flash-attn (when installed) for calls with no mask at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from .._triton import HAS_TRITON, NO_TRITON, has_module, launch_problem, load_config, require_triton

__all__ = ["block_attention", "unsupported", "flash_attention", "flash_unsupported", "HAS_FLASH_ATTN", "ACT_DTYPES"]

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
HAS_FLASH_ATTN: bool = has_module("flash_attn")
_HERE = Path(__file__).parent
_INT_DTYPES = (torch.int32, torch.int64)


def _problem(q, k, v, query_block, key_block, key_valid) -> Optional[str]:
    """Why these tensors are not a valid call, or None (shapes, dtypes and strides only)."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        return f"expected q (B,Hq,Q,D), k and v (B,Hkv,S,D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    B, Hq, Q, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        return f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim"
    if Hq % k.shape[1]:
        return f"query heads {Hq} not a multiple of key/value heads {k.shape[1]}"
    if q.dtype not in ACT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q/k/v dtypes {q.dtype}/{k.dtype}/{v.dtype}: one of {ACT_DTYPES}, all equal"
    if D < 16 or D > 256 or D & (D - 1):
        return f"head_dim={D}: must be a power of two in [16, 256]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(3) != 1:
            return f"{name} must be contiguous in head_dim (strides {t.stride()})"
    S = k.shape[2]
    if query_block.shape != (Q,) or key_block.shape != (S,):
        return f"query_block {tuple(query_block.shape)} / key_block {tuple(key_block.shape)}: expected ({Q},) / ({S},)"
    if query_block.dtype not in _INT_DTYPES or key_block.dtype not in _INT_DTYPES:
        return f"block ids must be int32/int64, got {query_block.dtype}/{key_block.dtype}"
    if key_valid is not None:
        if key_valid.dim() != 2 or key_valid.shape[1] != S or key_valid.shape[0] not in (1, B):
            return f"key_valid has shape {tuple(key_valid.shape)}; expected (1 or {B}, {S})"
        if key_valid.dtype != torch.bool:
            return f"key_valid dtype {key_valid.dtype}: expected bool"
    devs = {t.device for t in (q, k, v, query_block, key_block) + (() if key_valid is None else (key_valid,))}
    if len(devs) != 1:
        return f"all tensors must be on one device, got {sorted(map(str, devs))}"
    return None


def _check(q, k, v, query_block, key_block, key_valid) -> None:
    problem = _problem(q, k, v, query_block, key_block, key_valid)
    if problem:
        raise ValueError(problem)


def unsupported(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_block: torch.Tensor,
    key_block: torch.Tensor,
    key_valid: Optional[torch.Tensor] = None,
) -> Optional[str]:
    """Why ``block_attention`` would refuse this call (Triton missing, tensors where no kernel
    runs, or a shape, dtype or stride it does not serve); None when it serves it. Reads only
    metadata: no launch, no host sync."""
    return launch_problem(q, k, v, query_block, key_block) or _problem(q, k, v, query_block, key_block, key_valid)


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


def flash_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    """Why ``flash_attention`` would refuse this unmasked call; None when it serves it."""
    if not HAS_FLASH_ATTN:
        return "flash-attn is not installed"
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return "flash-attn runs on CUDA only"
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"flash-attn takes bf16/fp16, got {q.dtype}/{k.dtype}/{v.dtype}"
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[1] % k.shape[1] or q.shape[-1] > 256:
        return f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} are not a flash-attn GQA call"
    return None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Unmasked GQA attention through flash-attn: q (B,Hq,Q,D), k/v (B,Hkv,S,D) -> (B,Hq,Q,D)
    (a view of (B,Q,Hq,D) storage). Raises ValueError where ``flash_unsupported`` names a reason."""
    problem = flash_unsupported(q, k, v)
    if problem:
        raise ValueError(problem)
    from flash_attn import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=False)
    return out.transpose(1, 2)
