"""Host wrappers of the fused norms: RMSNorm (+ residual add) and QK-norm + partial RoPE."""

from __future__ import annotations

from typing import Optional

import torch

from .._triton import require_triton

__all__ = ["rms_norm", "qk_norm_rope", "ACT_DTYPES"]

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim, rounding as ``model_core.layers.norm.rms_norm``.

    x (..., N) contiguous bf16/fp16/fp32, weight (N,) same dtype. With ``residual`` (x's shape
    and dtype) returns (rms_norm(x + residual), x + residual), the sum rounded to x's dtype as
    the backbone's ``x = x + a`` does; otherwise returns the normed tensor.
    """
    require_triton(x, weight)
    if x.dtype not in ACT_DTYPES:
        raise ValueError(f"x dtype {x.dtype}: expected one of {ACT_DTYPES}")
    if x.dim() < 1 or weight.shape != (x.shape[-1],) or weight.dtype != x.dtype:
        raise ValueError(f"weight must be ({x.shape[-1] if x.dim() else '?'},) {x.dtype}, got {tuple(weight.shape)} {weight.dtype}")
    if not x.is_contiguous() or not weight.is_contiguous():
        raise ValueError("x and weight must be contiguous")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous()):
        raise ValueError(f"residual must be contiguous {x.dtype} {tuple(x.shape)}, got {residual.dtype} {tuple(residual.shape)}")
    if x.shape[-1] > 65536:
        raise ValueError(f"last dim {x.shape[-1]} is larger than this single-pass kernel handles (65536)")
    from . import kernel

    N = x.shape[-1]
    rows = x.numel() // N if N else 0
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else None
    if rows:
        block = _next_pow2(N)
        kernel.rms_norm_kernel[(rows,)](
            x, residual if residual is not None else x, weight, out, summed if summed is not None else out,
            N, eps, HAS_RES=residual is not None, BLOCK=block, num_warps=min(max(block // 256, 1), 8),
        )
    return (out, summed) if summed is not None else out


def qk_norm_rope(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k, then NeoX RoPE on their first R dims, in one launch.

    qkv (B, Q, Hq+2Hkv, D) with the head dim contiguous (the QKV projection's output viewed
    per head); q_weight, k_weight (D,); cos, sin (B, Q, R) with R even and <= D, all in qkv's
    dtype. Returns q (B,Hq,Q,D), k (B,Hkv,Q,D) contiguous and v (B,Hkv,Q,D), a view of qkv,
    the same values the backbone's Attention computes before attending.
    """
    require_triton(qkv)
    if qkv.dim() != 4 or qkv.shape[2] != num_heads + 2 * num_kv_heads:
        raise ValueError(f"qkv must be (B, Q, {num_heads}+2*{num_kv_heads}, D), got {tuple(qkv.shape)}")
    B, Q, _, D = qkv.shape
    if qkv.dtype not in ACT_DTYPES:
        raise ValueError(f"qkv dtype {qkv.dtype}: expected one of {ACT_DTYPES}")
    if qkv.stride(3) != 1 or qkv.stride(2) != D:
        raise ValueError(f"qkv must be contiguous over (heads, D) (strides {qkv.stride()})")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (D,) or w.dtype != qkv.dtype or not w.is_contiguous():
            raise ValueError(f"{name} must be contiguous ({D},) {qkv.dtype}, got {tuple(w.shape)} {w.dtype}")
    R = cos.shape[-1]
    if cos.dim() != 3 or cos.shape != sin.shape or cos.shape[:2] != (B, Q) or R % 2 or R > D or R == 0:
        raise ValueError(f"cos/sin must be (B={B}, Q={Q}, R) with R even in (0, {D}]; got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if cos.dtype != qkv.dtype or sin.dtype != qkv.dtype or cos.stride() != sin.stride() or cos.stride(2) != 1:
        raise ValueError("cos and sin must share qkv's dtype and strides, contiguous in the last dim")
    from . import kernel

    q = torch.empty(B, num_heads, Q, D, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(B, num_kv_heads, Q, D, dtype=qkv.dtype, device=qkv.device)
    v = qkv[:, :, num_heads + num_kv_heads :].transpose(1, 2)
    if B * Q:
        kernel.qk_norm_rope_kernel[(B * Q, num_heads + num_kv_heads)](
            qkv, q_weight, k_weight, cos, sin, q, k,
            Q, num_heads, num_kv_heads, eps,
            qkv.stride(0), qkv.stride(1), qkv.stride(2),
            cos.stride(0), cos.stride(1),
            D=D, R2=R // 2, BLOCK_R2=_next_pow2(R // 2), BLOCK_P=max(_next_pow2(D - R), 1), num_warps=1,
        )
    return q, k, v
