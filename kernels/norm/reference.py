"""fp32 ground truth for RMSNorm (+ residual add) and per-head QK-norm + partial NeoX RoPE."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["rms_norm_reference", "qk_norm_rope_reference"]


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., N) -> (normed, summed) in fp32, where summed = x + residual (or x)."""
    s = x.float() if residual is None else x.float() + residual.float()
    return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps) * weight.float(), s


def qk_norm_rope_reference(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv (B, Q, Hq+2Hkv, D), cos/sin (B, Q, R) -> q (B,Hq,Q,D), k (B,Hkv,Q,D), v (B,Hkv,Q,D), fp32."""
    x = qkv.float().transpose(1, 2)  # (B, heads, Q, D)
    q, k, v = x.split([num_heads, num_kv_heads, num_kv_heads], dim=1)
    r = cos.shape[-1]
    c, s = cos.float()[:, None], sin.float()[:, None]  # (B, 1, Q, R)

    def norm_rope(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w.float()
        rot, rest = t[..., :r], t[..., r:]
        half = r // 2
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        return torch.cat((rot * c + rotated * s, rest), dim=-1)

    return norm_rope(q, q_weight), norm_rope(k, k_weight), v
