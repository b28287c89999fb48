"""Flow-matching samplers of the decoder (MODEL_SPEC §6.3). Models compute; samplers decide.

Path: x_t = t·x₁ + (1 − t)·x₀ with x₀ noise (t = 0) and x₁ data (t = 1); the DiT predicts the
velocity x₁ − x₀. A sampler owns the time grid, the loop, the noise and the guidance policy:

* ``FlowEulerSampler`` ("normal" decoder): Euler steps over t = linspace(0, 1, n) shifted by
  t / (t + s − s·t), s = 6, in float32 as torchdiffeq's fixed-grid Euler does it. ``num_steps``
  is the number of grid points, as in the official API, so 50 points are 49 model calls.
* ``FlowRenoiseSampler`` ("turbo" decoder): uniform t_k = k/n, n model calls; each step, in
  float64, x̂₁ = x + (1 − t)·v, x̂₀ = x − t·v, then x ← t'·x̂₁ + (1 − t')·(√(1−ρ)·x̂₀ + √ρ·ε)
  with fresh Gaussian ε (ρ = 1); the last step returns x̂₁.

Guidance is a named policy: ``NoGuidance`` or ``NormClampedCFG`` (batch [cond, zeros],
pred = p + s·(p − n), then pred rescaled to ‖p‖ when it is longer; global L2 per sample).

Noise comes only from the ``torch.Generator`` objects passed in, one per batch row, drawn on
the CPU (so a seed gives the same image on every device) and never from the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, Union

import torch

__all__ = [
    "VelocityModel",
    "ProgressFn",
    "NoGuidance",
    "NormClampedCFG",
    "FlowEulerSampler",
    "FlowRenoiseSampler",
    "draw_noise",
    "shifted_grid",
]

# (x (B, C, H, W), t (B,), features (B, L, D)) -> velocity (B, C, H, W) in float32.
VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Called after each model evaluation with (evaluations done, evaluations in all).
ProgressFn = Callable[[int, int], None]


class Guidance(Protocol):
    def __call__(self, model: VelocityModel, x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor: ...


def draw_noise(
    shape: Sequence[int],
    generators: Sequence[torch.Generator],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal noise of ``shape`` whose row i comes from ``generators[i]`` (CPU draws).

    One row drawn alone equals the same row drawn in a batch, so an item decodes the same in a
    batch and on its own.
    """
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)


def shifted_grid(num_points: int, shift: float) -> torch.Tensor:
    """float32 t = linspace(0, 1, n), then t / (t + shift − shift·t) (the official order of ops)."""
    t = torch.linspace(0, 1, num_points)
    if shift:
        t = t / (t + shift - shift * t)
    return t


def _report(progress: Optional[ProgressFn], done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


@dataclass(frozen=True)
class NoGuidance:
    """A single conditional branch."""

    def __call__(self, model: VelocityModel, x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return model(x, t, feats).float()

    @property
    def branches(self) -> int:
        return 1


@dataclass(frozen=True)
class NormClampedCFG:
    """The decoder's CFG: uncond = zero features; pred = p + scale·(p − n); if ‖pred‖ > ‖p‖
    (L2 over each whole sample) pred is rescaled to length ‖p‖. The published scale is 1.0
    (guidance weight 2 in the n + w·(p − n) form)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale)):
            raise ValueError(f"scale={self.scale!r}: must be a finite number")

    @property
    def branches(self) -> int:
        return 2

    def combine(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """pos, neg (B, ...) float32 -> guided velocity (B, ...) float32; no host sync."""
        pred = pos + self.scale * (pos - neg)
        dims = tuple(range(1, pos.dim()))
        pos_norm = torch.linalg.vector_norm(pos, dim=dims, keepdim=True)
        pred_norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
        factor = torch.where(pred_norm > pos_norm, pos_norm / pred_norm, torch.ones_like(pos_norm))
        return pred * factor

    def __call__(self, model: VelocityModel, x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([feats, torch.zeros_like(feats)]))  # (2B, ...)
        return self.combine(out[:b].float(), out[b:].float())


GuidancePolicy = Union[NoGuidance, NormClampedCFG]


@dataclass(frozen=True)
class FlowEulerSampler:
    """The "normal" decoder's sampler: Euler ODE on the shifted grid, with CFG by default."""

    num_steps: int = 50
    shift: float = 6.0
    guidance: GuidancePolicy = field(default_factory=NormClampedCFG)

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or self.num_steps < 2:
            raise ValueError(f"num_steps={self.num_steps!r}: the Euler grid needs at least 2 points")
        if not (isinstance(self.shift, (int, float)) and self.shift >= 0 and math.isfinite(self.shift)):
            raise ValueError(f"shift={self.shift!r}: must be a finite number >= 0")

    @property
    def model_calls(self) -> int:
        """DiT forwards per image row (each has ``guidance.branches`` rows)."""
        return self.num_steps - 1

    def timesteps(self) -> torch.Tensor:
        """(num_steps,) float32, from 0 (noise) to 1 (data)."""
        return shifted_grid(self.num_steps, self.shift)

    @torch.no_grad()
    def sample(
        self,
        model: VelocityModel,
        noise: torch.Tensor,
        feats: torch.Tensor,
        generators: Optional[Sequence[torch.Generator]] = None,
        progress: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """noise (B, C, H, W) at t = 0 -> sample (B, C, H, W) float32 at t = 1. Deterministic
        given the noise (``generators`` is accepted for a uniform interface and unused)."""
        ts = self.timesteps().to(noise.device)
        x = noise.float()
        b = x.shape[0]
        for i in range(self.num_steps - 1):
            v = self.guidance(model, x, ts[i].expand(b), feats)
            x = x + (ts[i + 1] - ts[i]) * v
            _report(progress, i + 1, self.model_calls)
        return x


@dataclass(frozen=True)
class FlowRenoiseSampler:
    """The "turbo" decoder's sampler: uniform steps with re-noising, no CFG by default."""

    num_steps: int = 8
    stochasticity: float = 1.0
    guidance: GuidancePolicy = field(default_factory=NoGuidance)

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or isinstance(self.num_steps, bool) or self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps!r}: need at least 1 step")
        if not (isinstance(self.stochasticity, (int, float)) and 0 < self.stochasticity <= 1):
            raise ValueError(f"stochasticity={self.stochasticity!r}: must be in (0, 1] (0 is the Euler ODE sampler)")

    @property
    def model_calls(self) -> int:
        return self.num_steps

    def timesteps(self) -> torch.Tensor:
        """(num_steps + 1,) float64 k/n, rounded through float32 as the official code does when it
        moves its float64 grid to the float32 noise's dtype."""
        return torch.linspace(0, 1, self.num_steps + 1, dtype=torch.float64).float().double()

    @torch.no_grad()
    def sample(
        self,
        model: VelocityModel,
        noise: torch.Tensor,
        feats: torch.Tensor,
        generators: Optional[Sequence[torch.Generator]] = None,
        progress: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """noise (B, C, H, W) at t = 0 -> sample (B, C, H, W) float64 at t = 1.

        ``generators`` (one per row) supply the fresh noise of every step but the last; all of
        it is drawn before the loop (same per-generator order as drawing step by step).
        """
        n = self.num_steps
        if generators is None:
            raise ValueError("FlowRenoiseSampler needs one torch.Generator per batch row for its step noise")
        ts = self.timesteps().to(noise.device)
        eps = [draw_noise(noise.shape, generators, dtype=torch.float64, device=noise.device) for _ in range(n - 1)]
        keep, fresh = (1.0 - self.stochasticity) ** 0.5, self.stochasticity**0.5
        x = noise.to(torch.float64)
        b = x.shape[0]
        for k in range(n):
            t, t_next = ts[k], ts[k + 1]
            # float64 before any arithmetic: a 0-d float64 times a float32 tensor would stay float32.
            v = self.guidance(model, x, t.expand(b), feats).double()
            x1_hat = x + (1 - t) * v
            if k == n - 1:
                x = x1_hat  # t_next = 1: the noise term has weight 0
            else:
                x0_hat = x - t * v
                x = t_next * x1_hat + (1 - t_next) * (x0_hat * keep + eps[k] * fresh)
            _report(progress, k + 1, n)
        return x


Sampler = Union[FlowEulerSampler, FlowRenoiseSampler]
