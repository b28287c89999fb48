"""Host wrappers of the fused norms: RMSNorm (+ residual add) and QK-norm + partial RoPE.

``unsupported(kind, *args)`` says from metadata alone (no launch, no sync) why a call would be
refused, None when it is served, so a caller can choose its PyTorch path per call.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._triton import NO_TRITON, launch_problem, require_triton

__all__ = ["rms_norm", "qk_norm_rope", "unsupported", "ACT_DTYPES", "NO_TRITON"]

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _rms_problem(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor]) -> Optional[str]:
    if x.dtype not in ACT_DTYPES:
        return f"x dtype {x.dtype}: expected one of {ACT_DTYPES}"
    if x.dim() < 1 or weight.shape != (x.shape[-1],) or weight.dtype != x.dtype:
        return f"weight must be ({x.shape[-1] if x.dim() else '?'},) {x.dtype}, got {tuple(weight.shape)} {weight.dtype}"
    if not x.is_contiguous() or not weight.is_contiguous():
        return "x and weight must be contiguous"
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous()):
        return f"residual must be contiguous {x.dtype} {tuple(x.shape)}, got {residual.dtype} {tuple(residual.shape)}"
    if x.shape[-1] > 65536:
        return f"last dim {x.shape[-1]} is larger than this single-pass kernel handles (65536)"
    return None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim, rounding as ``model_core.layers.norm.rms_norm``.

    x (..., N) contiguous bf16/fp16/fp32, weight (N,) same dtype. With ``residual`` (x's shape
    and dtype) returns (rms_norm(x + residual), x + residual), the sum rounded to x's dtype as
    the backbone's ``x = x + a`` does; otherwise returns the normed tensor.
    """
    require_triton(x, weight)
    problem = _rms_problem(x, weight, residual)
    if problem:
        raise ValueError(problem)
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


def _qk_problem(qkv, q_weight, k_weight, cos, sin, num_heads: int, num_kv_heads: int) -> Optional[str]:
    if qkv.dim() != 4 or qkv.shape[2] != num_heads + 2 * num_kv_heads:
        return f"qkv must be (B, Q, {num_heads}+2*{num_kv_heads}, D), got {tuple(qkv.shape)}"
    B, Q, _, D = qkv.shape
    if qkv.dtype not in ACT_DTYPES:
        return f"qkv dtype {qkv.dtype}: expected one of {ACT_DTYPES}"
    if qkv.stride(3) != 1 or qkv.stride(2) != D:
        return f"qkv must be contiguous over (heads, D) (strides {qkv.stride()})"
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (D,) or w.dtype != qkv.dtype or not w.is_contiguous():
            return f"{name} must be contiguous ({D},) {qkv.dtype}, got {tuple(w.shape)} {w.dtype}"
    R = cos.shape[-1]
    if cos.dim() != 3 or cos.shape != sin.shape or cos.shape[:2] != (B, Q) or R % 2 or R > D or R == 0:
        return f"cos/sin must be (B={B}, Q={Q}, R) with R even in (0, {D}]; got {tuple(cos.shape)}, {tuple(sin.shape)}"
    if cos.dtype != qkv.dtype or sin.dtype != qkv.dtype or cos.stride() != sin.stride() or cos.stride(2) != 1:
        return "cos and sin must share qkv's dtype and strides, contiguous in the last dim"
    return None


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
    problem = _qk_problem(qkv, q_weight, k_weight, cos, sin, num_heads, num_kv_heads)
    if problem:
        raise ValueError(problem)
    B, Q, _, D = qkv.shape
    R = cos.shape[-1]
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


def unsupported(kind: str, *args) -> Optional[str]:
    """Why ``rms_norm`` (kind "rms_norm": x, weight[, residual]) or ``qk_norm_rope`` (kind
    "qk_norm_rope": its arguments) would refuse this call; None when it serves it. Metadata only."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    problem = launch_problem(*tensors)
    if problem:
        return problem
    if kind == "rms_norm":
        x, weight, *rest = args
        return _rms_problem(x, weight, rest[0] if rest else None)
    if kind == "qk_norm_rope":
        return _qk_problem(*args)
    return f"unknown norm kernel {kind!r}"
