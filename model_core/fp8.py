"""Block-scaled FP8 weights: float8_e4m3fn values with one fp32 ``weight_scale_inv`` per 128 x 128
block, the layout of the published DeepSeek-V3-style FP8 checkpoints.

A weight (..., N, K) is stored as ``q`` (..., N, K) float8_e4m3fn and ``scale_inv``
(..., ceil(N / 128), ceil(K / 128)) float32, and means ``w[n, k] = q[n, k] * scale_inv[n // 128, k // 128]``.
Each block is scaled so its largest magnitude maps to e4m3's largest finite value (448).

Stacked routed experts (``model_core.moe.StackedExperts``) keep the checkpoint's split: the gate
and the up projection are quantized separately and their scales stacked the same way as the
weights, so ``gate_up_scale`` is (E, 2 * ceil(I / 128), ceil(H / 128)) with the gate's block rows
first, and ``down_scale`` is (E, ceil(H / 128), ceil(I / 128)). This is what
``lladauni.kernels.moe`` takes; model_core keeps its own torch implementation here so that it
runs without the kernels package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "FP8_DTYPE",
    "FP8_BLOCK",
    "FP8_MAX",
    "scale_shape",
    "quantize_blockwise_fp8",
    "dequantize_blockwise_fp8",
    "quantize_gate_up_fp8",
    "dequantize_gate_up_fp8",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_BLOCK = 128
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)


def scale_shape(rows: int, cols: int, block: int = FP8_BLOCK) -> tuple[int, int]:
    """The scale grid of a (rows, cols) weight: (ceil(rows / block), ceil(cols / block))."""
    return -(-rows // block), -(-cols // block)


def _as_blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    """(..., N, K) -> zero-padded (..., N/b, b, K/b, b) fp32 view of whole blocks."""
    rows, cols = w.shape[-2:]
    nb, kb = scale_shape(rows, cols, block)
    padded = F.pad(w.float(), (0, kb * block - cols, 0, nb * block - rows))
    return padded.reshape(*w.shape[:-2], nb, block, kb, block)


def _from_blocks(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of ``_as_blocks``: (..., nb, b, kb, b) -> (..., rows, cols), padding cut off."""
    lead = tiles.shape[:-4]
    nb, b, kb, _ = tiles.shape[-4:]
    return tiles.reshape(*lead, nb * b, kb * b)[..., :rows, :cols]


def quantize_blockwise_fp8(w: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., N, K) float weight -> (q float8_e4m3fn (..., N, K), scale_inv float32 (..., N/b, K/b)).

    Raises ValueError when the weight holds inf or NaN (e4m3fn has no infinity)."""
    if not torch.isfinite(w).all():
        raise ValueError(f"cannot quantize a weight of shape {tuple(w.shape)} to FP8: it holds inf or NaN values")
    tiles = _as_blocks(w, block)
    amax = tiles.abs().amax(dim=-1).amax(dim=-2)  # (..., nb, kb)
    scale_inv = amax.clamp_min(1e-12) / FP8_MAX
    scaled = tiles / scale_inv.unsqueeze(-1).unsqueeze(-3)
    q = _from_blocks(scaled, *w.shape[-2:]).to(FP8_DTYPE)
    return q.contiguous(), scale_inv.contiguous()


def dequantize_blockwise_fp8(
    q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32, block: int = FP8_BLOCK
) -> torch.Tensor:
    """(..., N, K) float8 and its (..., N/b, K/b) scale_inv -> (..., N, K) weight in ``dtype``
    (computed in fp32, then cast)."""
    rows, cols = q.shape[-2:]
    want = (*q.shape[:-2], *scale_shape(rows, cols, block))
    if tuple(scale_inv.shape) != want:
        raise ValueError(
            f"scale_inv has shape {tuple(scale_inv.shape)}; a weight of shape {tuple(q.shape)} with "
            f"{block} x {block} blocks needs {want}"
        )
    tiles = _as_blocks(q, block) * scale_inv.float().unsqueeze(-1).unsqueeze(-3)
    return _from_blocks(tiles, rows, cols).to(dtype)


def quantize_gate_up_fp8(gate_up: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked (..., 2I, H) gate+up -> (q (..., 2I, H), scale_inv (..., 2 * ceil(I/b), H/b)): the gate
    rows and the up rows are quantized as two weights, as the checkpoint stores them."""
    half = gate_up.shape[-2] // 2
    gq, gs = quantize_blockwise_fp8(gate_up[..., :half, :], block)
    uq, us = quantize_blockwise_fp8(gate_up[..., half:, :], block)
    return torch.cat((gq, uq), dim=-2), torch.cat((gs, us), dim=-2)


def dequantize_gate_up_fp8(
    q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32, block: int = FP8_BLOCK
) -> torch.Tensor:
    """Inverse of :func:`quantize_gate_up_fp8`: (..., 2I, H) in ``dtype``."""
    half, nb = q.shape[-2] // 2, scale_inv.shape[-2] // 2
    gate = dequantize_blockwise_fp8(q[..., :half, :], scale_inv[..., :nb, :], dtype, block)
    up = dequantize_blockwise_fp8(q[..., half:, :], scale_inv[..., nb:, :], dtype, block)
    return torch.cat((gate, up), dim=-2)
