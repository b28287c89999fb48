"""fp32 ground truth for the fused MoE, and the FP8 block-scale helpers.

Weight layout is the backbone's: ``gate_up`` (E, 2I, H) with the gate rows first, ``down``
(E, H, I). FP8 weights are float8_e4m3fn with one fp32 ``weight_scale_inv`` per 128 x 128 block,
as in the published FP8 checkpoint (DeepSeek-V3 style): ``w = w_fp8 * scale_inv[n // 128, k // 128]``.
Stacked gate+up scales are the gate's and the up projection's stacked the same way:
(E, 2 * ceil(I / 128), ceil(H / 128)); down scales are (E, ceil(H / 128), ceil(I / 128)).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "moe_reference", "dequantize_blockwise", "quantize_blockwise", "quantize_experts", "sort_by_expert_reference", "FP8_BLOCK",
]

FP8_BLOCK = 128


def sort_by_expert_reference(topk_ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouping of the T*K assignments by expert in torch (several launches, no host sync).

    Returns order_A (A,) int32: the stable argsort of the flattened ids (sorted position ->
    assignment t*K+k), sorted_tok_A (A,) int32: its token row t, and offsets_E1 (E+1,) int32:
    expert e owns sorted rows offsets[e]..offsets[e+1].
    """
    flat_A = topk_ids_TK.reshape(-1)
    order_A = torch.argsort(flat_A, stable=True).to(torch.int32)
    # scatter_add_ instead of bincount: bincount sizes its output on the host (a sync).
    counts_E = torch.zeros(num_experts, dtype=torch.int32, device=flat_A.device)
    counts_E.scatter_add_(0, flat_A.long(), torch.ones_like(flat_A, dtype=torch.int32))
    offsets_E1 = torch.zeros(num_experts + 1, dtype=torch.int32, device=flat_A.device)
    torch.cumsum(counts_E, 0, out=offsets_E1[1:])
    sorted_tok_A = torch.div(order_A, topk_ids_TK.shape[1], rounding_mode="floor")
    return order_A, sorted_tok_A, offsets_E1


def dequantize_blockwise(w_fp8: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """(..., N, K) float8 and (..., ceil(N/block), ceil(K/block)) fp32 -> (..., N, K) fp32."""
    n, k = w_fp8.shape[-2:]
    s = scale_inv.float().repeat_interleave(block, dim=-2)[..., :n, :]
    s = s.repeat_interleave(block, dim=-1)[..., :k]
    return w_fp8.float() * s


def quantize_blockwise(w: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., N, K) float -> float8_e4m3fn weights and fp32 scale_inv (..., ceil(N/b), ceil(K/b))."""
    n, k = w.shape[-2:]
    nb, kb = -(-n // block), -(-k // block)
    pad = F.pad(w.float(), (0, kb * block - k, 0, nb * block - n))
    tiles = pad.unflatten(-2, (nb, block)).unflatten(-1, (kb, block))  # (..., nb, b, kb, b)
    amax = tiles.abs().amax(dim=(-3, -1)).clamp_min(1e-12)  # (..., nb, kb)
    scale_inv = amax / torch.finfo(torch.float8_e4m3fn).max
    q = tiles / scale_inv[..., :, None, :, None]
    q = q.flatten(-4, -3).flatten(-2, -1)[..., :n, :k].to(torch.float8_e4m3fn)
    return q.contiguous(), scale_inv.contiguous()


def quantize_experts(
    gate_up_EIH: torch.Tensor, down_EHI: torch.Tensor, block: int = FP8_BLOCK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked experts -> (gate_up_fp8, gate_up_scale, down_fp8, down_scale) in the layout above:
    gate and up are quantized separately (as the checkpoint stores them), then stacked."""
    I = gate_up_EIH.shape[1] // 2
    gq, gs = quantize_blockwise(gate_up_EIH[:, :I], block)
    uq, us = quantize_blockwise(gate_up_EIH[:, I:], block)
    dq, ds = quantize_blockwise(down_EHI, block)
    return torch.cat((gq, uq), dim=1), torch.cat((gs, us), dim=1), dq, ds


def dequantize_experts(
    gate_up_q: torch.Tensor, gate_up_scale: torch.Tensor, block: int = FP8_BLOCK
) -> torch.Tensor:
    """Inverse of the gate_up half of :func:`quantize_experts`: (E, 2I, H) fp32."""
    I = gate_up_q.shape[1] // 2
    nb = gate_up_scale.shape[1] // 2
    return torch.cat(
        (dequantize_blockwise(gate_up_q[:, :I], gate_up_scale[:, :nb], block),
         dequantize_blockwise(gate_up_q[:, I:], gate_up_scale[:, nb:], block)),
        dim=1,
    )


def moe_reference(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    gate_up_scale: Optional[torch.Tensor] = None,
    down_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """All in fp32, no intermediate rounding: y (T, H) fp32 = sum_k w[t,k] * expert_{id[t,k]}(x[t])."""
    gu = gate_up_EIH.float() if gate_up_scale is None else dequantize_experts(gate_up_EIH, gate_up_scale)
    dn = down_EHI.float() if down_scale is None else dequantize_blockwise(down_EHI, down_scale)
    I = gu.shape[1] // 2
    x32 = x_TH.float()
    T, K = topk_ids_TK.shape
    y_TH = torch.zeros(T, x_TH.shape[1], dtype=torch.float32, device=x_TH.device)
    for k in range(K):  # rank order, as the backbone combines
        ids_T = topk_ids_TK[:, k]
        g_TI = torch.einsum("th,tih->ti", x32, gu[ids_T, :I])
        u_TI = torch.einsum("th,tih->ti", x32, gu[ids_T, I:])
        o_TH = torch.einsum("ti,thi->th", F.silu(g_TI) * u_TI, dn[ids_T])
        y_TH += topk_weights_TK[:, k, None].float() * o_TH
    return y_TH
