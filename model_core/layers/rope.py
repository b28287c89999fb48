"""Partial NeoX-style rotary position embedding (rotate-half on the first ``rotary_dim`` dims)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PartialRotaryEmbedding", "apply_partial_rope", "rotate_half"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x``; the rest pass through.

    x: (B, H, T, D); cos, sin: (B, T, R) with R <= D, already in x's dtype.
    """
    rd = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, R)
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


class PartialRotaryEmbedding(nn.Module):
    """cos/sin tables for integer positions: inv_freq = base^(-2i/R), emb = cat(freqs, freqs).

    Computed in fp32 and cast to the activation dtype, as the official code does. The inverse
    frequencies are recomputed on demand (cheap), so a model built on the meta device needs no
    buffer fix-up after its weights are loaded.
    """

    def __init__(self, rotary_dim: int, base: float) -> None:
        super().__init__()
        if rotary_dim % 2:
            raise ValueError(f"rotary_dim={rotary_dim}: must be even")
        self.rotary_dim = rotary_dim
        self.base = base
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        key = torch.device(device)
        if key not in self._inv_freq:
            exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.int64).to(device=key, dtype=torch.float32)
            self._inv_freq[key] = 1.0 / (self.base ** (exponents / self.rotary_dim))
        return self._inv_freq[key]

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: (B, T) integer -> cos, sin: (B, T, rotary_dim) in ``dtype``."""
        inv = self.inv_freq(position_ids.device)
        freqs = position_ids.float()[..., None] * inv  # (B, T, R/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)
