"""Token sampling and unmasking policies of the block-diffusion sampler (MODEL_SPEC §5.1, §5.5).

Two ways to decide which masked positions of the active block get committed at a step:

- ``quota`` (the official baseline): sample x0 and its probability; commit every masked position
  whose probability exceeds ``threshold`` if there are at least ``quota[step]`` of them, else the
  ``quota[step]`` most confident ones.
- ``adaptive`` (the official SPRINT path): Gumbel-style noise in float64, top-p/top-k, x0 = argmax;
  a confidence per ``remasking`` policy; commit the top ``ceil(masked / steps_left)`` positions
  (at least ``minimal_topk``) united with every masked position whose max probability exceeds
  ``threshold``.

All randomness goes through an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "REMASKING",
    "transfer_schedule",
    "sample_tokens",
    "quota_transfer",
    "quota_transfer_on_device",
    "guide_logits",
    "confidence_scores",
    "adaptive_transfer",
]

REMASKING = ("low_confidence", "top_k_margin", "neg_entropy", "random")


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """Tokens to commit at each step: block // steps, plus one for the first block % steps steps."""
    if steps <= 0:
        return []
    base, rem = divmod(block_length, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def _top_k_filter(logits: torch.Tensor, k: Optional[int], fill: float) -> torch.Tensor:
    if k is None or k <= 0:
        return logits
    kth = torch.topk(logits, min(k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, fill)


def _top_p_filter(logits: torch.Tensor, p: Optional[float], fill: float) -> torch.Tensor:
    if p is None or p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cum > p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token past the cutoff
    remove[..., 0] = False
    mask = torch.zeros_like(remove).scatter(-1, sorted_idx, remove)
    return logits.masked_fill(mask, fill)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline sampling: (L, V) fp32 logits -> tokens (L,) and their probabilities (L,).

    temperature 0 is greedy; otherwise logits / temperature, top-k then top-p filtering,
    softmax and a multinomial draw.
    """
    if temperature == 0.0:
        probs = F.softmax(logits, dim=-1)
        tok = torch.argmax(logits, dim=-1, keepdim=True)
        return tok.squeeze(-1), probs.gather(-1, tok).squeeze(-1)
    if temperature != 1.0:
        logits = logits / temperature
    logits = _top_p_filter(_top_k_filter(logits, top_k, float("-inf")), top_p, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    tok = torch.multinomial(probs, num_samples=1, generator=generator)
    return tok.squeeze(-1), probs.gather(-1, tok).squeeze(-1)


def quota_transfer(prob: torch.Tensor, masked: torch.Tensor, quota: int, threshold: float) -> torch.Tensor:
    """Which positions (L,) to commit: all above threshold if they meet the quota, else the top-quota."""
    conf = torch.where(masked, prob, torch.full_like(prob, -math.inf))
    high = conf > threshold
    if int(high.sum()) >= quota:
        return high
    out = torch.zeros_like(masked)
    k = min(quota, int(masked.sum()))
    if k > 0:
        out[torch.topk(conf, k=k).indices] = True
    return out


def quota_transfer_on_device(prob: torch.Tensor, masked: torch.Tensor, quota: torch.Tensor, threshold: float) -> torch.Tensor:
    """``quota_transfer`` with the quota a 0-dim device tensor and no host sync (fixed shapes).

    The top ``min(quota, masked)`` positions are taken by a stable descending sort, so among
    exactly equal probabilities the lower position wins (``torch.topk`` leaves that order
    unspecified; with real-valued logits such ties do not occur in practice).
    """
    conf = torch.where(masked, prob, torch.full_like(prob, -math.inf))
    high = conf > threshold
    k = torch.minimum(quota, masked.sum())
    order = torch.argsort(conf, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
    return torch.where(high.sum() >= quota, high, rank < k)


def guide_logits(row_logits: torch.Tensor, guidance) -> torch.Tensor:
    """(R, L, V) -> (L, V): classifier-free guidance (a ``CFGSpec`` or None) and its rescale,
    before any vocabulary restriction. Device-only."""
    g = guidance
    if g is None or not g.active:
        return row_logits[0]
    if g.kind == "simple":
        c, u = row_logits[0], row_logits[1]
        out = u + g.scale * (c - u)
    else:
        full, nt, ni = row_logits[0], row_logits[1], row_logits[2]
        out = nt + g.text_scale * (full - nt) + g.image_scale * (nt - ni)
        c = full
    if g.rescale > 0:
        rescaled = out * (c.std(dim=-1, keepdim=True) / (out.std(dim=-1, keepdim=True) + 1e-6))
        out = g.rescale * rescaled + (1.0 - g.rescale) * out
    return out


def confidence_scores(
    logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, remasking: str, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """Per-position confidence (L,) for the adaptive policy; -inf where not masked."""
    scores = torch.full(x0.shape, -np.inf, dtype=logits.dtype, device=logits.device)
    if remasking == "random":
        n = int(masked.sum())
        if n:
            scores[masked] = torch.rand(n, generator=generator, device=logits.device).to(logits.dtype)
        return scores
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r}: choose one of {REMASKING}")
    rows = logits[masked]
    if rows.numel() == 0:
        return scores
    p = F.softmax(rows.float(), dim=-1).to(logits.dtype)
    if remasking == "low_confidence":
        s = p.gather(-1, x0[masked].unsqueeze(-1)).squeeze(-1)
    elif remasking == "top_k_margin":
        top2 = torch.topk(p, 2, dim=-1).values if p.shape[-1] >= 2 else None
        s = top2[:, 0] - top2[:, 1] if top2 is not None else torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    else:
        entropy = -(p * torch.log(p + 1e-10)).sum(-1)
        s = 1.0 - entropy / (float(np.log(p.shape[-1])) if p.shape[-1] > 1 else 1.0)
    scores[masked] = s
    return scores


def adaptive_transfer(
    logits: torch.Tensor,
    masked: torch.Tensor,
    current: torch.Tensor,
    *,
    temperature: float,
    top_p: Optional[float],
    top_k: Optional[int],
    remasking: str,
    steps_left: int,
    minimal_topk: int,
    threshold: float,
    generator: Optional[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPRINT's adaptive unmasking for one row: (L, V) logits -> (x0 (L,), commit (L,) bool)."""
    noisy = logits
    if temperature != 0:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
        noisy = logits.to(torch.float64).exp() / (-torch.log(u)) ** temperature
    fill = torch.finfo(noisy.dtype).min
    noisy = _top_k_filter(_top_p_filter(noisy, top_p, fill), top_k, fill)
    x0 = torch.argmax(noisy, dim=-1)
    conf = confidence_scores(logits, x0, masked, remasking, generator)
    x0 = torch.where(masked, x0, current)
    commit = torch.zeros_like(masked)
    m = int(masked.sum())
    if m > 0:
        k = min(max(int(minimal_topk), math.ceil(m / max(1, int(steps_left)))), m)
        commit[torch.topk(conf, k=k).indices] = True
    high = (F.softmax(logits.float(), dim=-1).max(dim=-1).values > threshold) & masked
    return x0, commit | high
