"""SPRINT prefix pruning (MODEL_SPEC §5.5a): keep the most important cached prefix keys/values.

Per layer, a prefix token's importance is the L2 norm of its key averaged over KV heads,
optionally blended with its prediction confidence: ``alpha * importance / mean + (1 - alpha) *
confidence``. Pinned tokens (text when ``text_keep_ratio`` is None or >= 1, image when
``image_keep_ratio`` >= 1) are always kept. ``keep = max(int(prefix * keep_ratio), 1, pinned)``.

Two defects of the official code are fixed here, each behind a flag that reproduces it:

- ``legacy_scores`` (official): pinned tokens get +inf importance *before* the mean is taken, so
  the mean is +inf, pinned scores become NaN (ranked first by ``topk``) and every unpinned
  importance becomes 0, leaving unpinned tokens ranked by confidence alone. Fixed: pinned tokens
  are ranked first explicitly and the mean is taken over the unpinned tokens.
- ``valid`` (fixed) / ``None`` (official): the uncond branch's left padding is ordinary prefix
  in the official cache, so padding can be kept and becomes visible to later steps. Fixed:
  invalid positions are never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["SprintConfig", "prune_prefix"]


@dataclass(frozen=True)
class SprintConfig:
    """SPRINT settings; defaults are the official ``generate_*`` defaults."""

    keep_ratio: float = 0.7
    cache_warmup_steps: int = 2
    confidence_alpha: float = 0.5
    image_keep_ratio: Optional[float] = None
    text_keep_ratio: Optional[float] = None
    remasking: str = "low_confidence"
    legacy_scores: bool = False  # reproduce the official NaN/inf ranking
    legacy_padding: bool = False  # reproduce the official visible uncond padding

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio:
            raise ValueError(f"keep_ratio={self.keep_ratio}: must be > 0")
        if self.cache_warmup_steps < 0:
            raise ValueError(f"cache_warmup_steps={self.cache_warmup_steps}: must be >= 0")


def prune_prefix(
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    prefix_ids: torch.Tensor,
    confidence: Optional[torch.Tensor],
    valid: Optional[torch.Tensor],
    cfg: SprintConfig,
    image_token_offset: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prune one branch's prefix cache.

    keys/values: per layer (1, Hkv, P, D); prefix_ids: (P,); confidence: (P,) fp32 or None;
    valid: (P,) bool or None (None = every position is a real token). Returns per-layer
    (1, Hkv, K_l, D) tensors, positions kept in their original order.
    """
    P = prefix_ids.shape[0]
    if P == 0:
        return keys, values
    is_text = prefix_ids < image_token_offset
    pin = torch.zeros(P, dtype=torch.bool, device=prefix_ids.device)
    if cfg.text_keep_ratio is None or cfg.text_keep_ratio >= 1.0:
        pin |= is_text
    if cfg.image_keep_ratio is not None and cfg.image_keep_ratio >= 1.0:
        pin |= ~is_text
    if valid is not None:
        pin &= valid
    n_valid = P if valid is None else int(valid.sum())
    n_pinned = int(pin.sum())
    keep_all = cfg.keep_ratio >= 1.0 or n_pinned >= n_valid
    if keep_all and valid is None:
        return keys, values
    alpha = float(min(1.0, max(0.0, cfg.confidence_alpha)))
    # the budget counts real tokens only (the official code counts padding too, see legacy_padding)
    budget_of = P if valid is None else n_valid
    base_keep = budget_of if cfg.keep_ratio >= 1.0 else max(1, int(budget_of * cfg.keep_ratio))
    keep_num = min(max(base_keep, n_pinned), n_valid)

    out_k, out_v = [], []
    for k, v in zip(keys, values):
        importance = k[0].float().norm(dim=-1).mean(dim=0)  # (P,)
        if cfg.legacy_scores:
            importance = importance.masked_fill(pin, float("inf"))
            if confidence is not None and alpha < 1.0:
                mean = importance.mean().clamp_min(1e-6)
                importance = alpha * (importance / mean) + (1.0 - alpha) * confidence.float()
        else:
            free = ~pin if valid is None else (~pin & valid)
            if confidence is not None and alpha < 1.0:
                mean = importance[free].mean().clamp_min(1e-6) if bool(free.any()) else importance.new_tensor(1.0)
                importance = alpha * (importance / mean) + (1.0 - alpha) * confidence.float()
            importance = importance.masked_fill(pin, float("inf"))
        if valid is not None:
            importance = importance.masked_fill(~valid, float("-inf"))
        if keep_all:
            idx = torch.nonzero(valid, as_tuple=True)[0]
        else:
            idx = torch.topk(importance, k=keep_num).indices.sort().values
        out_k.append(k[:, :, idx])
        out_v.append(v[:, :, idx])
    return out_k, out_v
