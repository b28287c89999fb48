"""fp32 ground truth of masked GQA attention under the backbone's block mask rule.

Query i of batch b may attend key j iff ``key_block[j] <= query_block[i]`` and
``key_valid[b, j]`` (``model_core.layers.attention.AttentionMask``); a query that sees no key
gets zeros.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["attention_reference"]


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    query_block: torch.Tensor,
    key_block: torch.Tensor,
    key_valid: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """q (B, Hq, Q, D), k/v (B, Hkv, S, D) -> (B, Hq, Q, D) fp32."""
    g = q.shape[1] // k.shape[1]
    k32 = k.float().repeat_interleave(g, dim=1)  # (B, Hq, S, D)
    v32 = v.float().repeat_interleave(g, dim=1)
    s = torch.matmul(q.float(), k32.transpose(-1, -2)) * scale  # (B, Hq, Q, S)
    allowed = (key_block[None, :] <= query_block[:, None])[None, None]  # (1, 1, Q, S)
    if key_valid is not None:
        allowed = allowed & key_valid.bool()[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no key: all -inf -> NaN -> 0
    return torch.matmul(p, v32)
