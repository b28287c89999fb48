"""Host wrapper of the fused MoE: checks, sort-by-expert on the device (two launches), three launches.

``fused_moe`` takes plain tensors in the layout of a routed-expert call (the signature of
``lladauni.model_core.moe.loop_moe``, plus optional FP8 scales); ``unsupported`` says, from
metadata alone, why a call would be refused. It never synchronises with the host: the per-expert
offsets stay on the device and the grids depend only on shapes, which makes a backbone step
that uses it capturable in a CUDA graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from .._triton import HAS_TRITON, NO_TRITON, launch_problem, load_config, require_triton
from .reference import FP8_BLOCK, sort_by_expert_reference

__all__ = [
    "fused_moe", "unsupported", "sort_by_expert", "sort_unsupported", "triton_sort_by_expert", "ACT_DTYPES",
    "MAX_SORT_EXPERTS", "MAX_SORT_ASSIGNMENTS",
]

ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SORT_ID_DTYPES = (torch.int32, torch.int64)
MAX_SORT_EXPERTS = 1024  # experts held as one padded vector by each sort program
MAX_SORT_ASSIGNMENTS = 1 << 24  # T*K; keeps the sort kernels' int32 offsets in range
SORT_TILE = 16384  # elements of a sort program's (assignments x experts) tile
_HERE = Path(__file__).parent


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def sort_unsupported(topk_ids_TK: torch.Tensor, num_experts: int) -> Optional[str]:
    """Why ``triton_sort_by_expert`` would refuse these ids (Triton missing, tensors where no
    kernel runs, or a shape, dtype or size it does not serve); None when it serves them."""
    problem = launch_problem(topk_ids_TK)
    if problem:
        return problem
    if topk_ids_TK.dim() != 2:
        return f"topk_ids must be (T, K), got shape {tuple(topk_ids_TK.shape)}"
    if topk_ids_TK.dtype not in SORT_ID_DTYPES:
        return f"topk_ids dtype {topk_ids_TK.dtype}: the sort kernel takes {SORT_ID_DTYPES}"
    if not 1 <= num_experts <= MAX_SORT_EXPERTS:
        return f"num_experts={num_experts} must lie in [1, MAX_SORT_EXPERTS={MAX_SORT_EXPERTS}]; raise it in {__name__}"
    if topk_ids_TK.numel() > MAX_SORT_ASSIGNMENTS:
        return (
            f"{topk_ids_TK.numel()} assignments (T*K) exceed MAX_SORT_ASSIGNMENTS={MAX_SORT_ASSIGNMENTS} "
            f"(int32 indexing); raise it in {__name__} only with 64-bit offsets in the kernel"
        )
    return None


def triton_sort_by_expert(topk_ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sort_by_expert_reference``'s outputs, bit for bit, in two Triton launches (no host sync:
    the grid depends on T*K and E only). Ids outside [0, E) get no row (the reference would
    fail on them); the rows of the others are as if those assignments were not there.
    RuntimeError without Triton; ValueError for any other problem ``sort_unsupported`` names."""
    require_triton(topk_ids_TK)
    problem = sort_unsupported(topk_ids_TK, num_experts)
    if problem:
        raise ValueError(problem)
    from . import kernel

    dev = topk_ids_TK.device
    flat_A = topk_ids_TK.reshape(-1)
    A = flat_A.numel()
    block_e = _next_pow2(num_experts)
    block_a = min(max(SORT_TILE // block_e, 16), 128)
    chunks = max(-(-A // block_a), 1)  # program 0 writes the offsets even when A == 0
    block_c = min(_next_pow2(chunks), max(SORT_TILE // block_e, 1))
    counts_CE = torch.empty(chunks, block_e, dtype=torch.int32, device=dev)
    order_A = torch.empty(A, dtype=torch.int32, device=dev)
    sorted_tok_A = torch.empty(A, dtype=torch.int32, device=dev)
    offsets_E1 = torch.empty(num_experts + 1, dtype=torch.int32, device=dev)
    kernel.expert_count_kernel[(chunks,)](flat_A, counts_CE, A, num_experts, BLOCK_A=block_a, BLOCK_E=block_e, num_warps=4)
    kernel.expert_scatter_kernel[(chunks,)](
        flat_A, counts_CE, order_A, sorted_tok_A, offsets_E1, A, num_experts, chunks, topk_ids_TK.shape[1],
        BLOCK_A=block_a, BLOCK_E=block_e, BLOCK_C=block_c, num_warps=4,
    )
    return order_A, sorted_tok_A, offsets_E1


def sort_by_expert(topk_ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Device-side grouping of the T*K assignments by expert, without host syncs.

    Returns order_A (A,) int32 (sorted position -> original assignment t*K+k, the stable argsort
    of the ids), sorted_tok_A (A,) int32 (its token row) and offsets_E1 (E+1,) int32 (expert e owns
    sorted rows offsets[e]..offsets[e+1]). Two Triton launches where ``sort_unsupported`` has no
    objection, else ``sort_by_expert_reference`` (torch); both give the same tensors.
    """
    if _SORT_FAILURE is None and sort_unsupported(topk_ids_TK, num_experts) is None:
        try:
            return triton_sort_by_expert(topk_ids_TK, num_experts)
        except Exception as exc:  # a compiler or driver that refuses the kernel: say so once, keep going
            _sort_failed(exc)
    return sort_by_expert_reference(topk_ids_TK, num_experts)


_SORT_FAILURE: Optional[str] = None


def _sort_failed(exc: Exception) -> None:
    """The sort kernel failed to compile or launch here: remembered (the torch sort serves from
    now on, same tensors) and reported once as a RuntimeWarning with its cause."""
    global _SORT_FAILURE
    _SORT_FAILURE = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"the MoE sort-by-expert kernel failed ({_SORT_FAILURE[:300]}); using the torch sort "
                  f"(same result, a few more launches)", RuntimeWarning, stacklevel=3)


def _problem(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    gate_up_scale: Optional[torch.Tensor],
    down_scale: Optional[torch.Tensor],
) -> Optional[str]:
    """Why these tensors are not a valid call, or None (metadata only)."""
    if x_TH.dim() != 2:
        return f"x must be (T, H), got shape {tuple(x_TH.shape)}"
    if x_TH.dtype not in ACT_DTYPES:
        return f"x dtype {x_TH.dtype}: expected one of {ACT_DTYPES}"
    if gate_up_EIH.dim() != 3 or down_EHI.dim() != 3:
        return f"gate_up must be (E, 2I, H) and down (E, H, I); got {tuple(gate_up_EIH.shape)}, {tuple(down_EHI.shape)}"
    E, two_i, H = gate_up_EIH.shape
    I = two_i // 2
    if two_i % 2 or H != x_TH.shape[1] or tuple(down_EHI.shape) != (E, H, I):
        return (
            f"shapes disagree: x {tuple(x_TH.shape)}, gate_up {tuple(gate_up_EIH.shape)}, down {tuple(down_EHI.shape)}; "
            "expected x (T, H), gate_up (E, 2I, H), down (E, H, I)"
        )
    fp8 = gate_up_EIH.dtype == torch.float8_e4m3fn
    if fp8 != (down_EHI.dtype == torch.float8_e4m3fn):
        return f"gate_up is {gate_up_EIH.dtype} but down is {down_EHI.dtype}: both FP8 or neither"
    if fp8:
        if x_TH.dtype == torch.float32:
            return "FP8 experts take bfloat16 or float16 activations, got float32"
        nb_i, nb_h = -(-I // FP8_BLOCK), -(-H // FP8_BLOCK)
        for name, s, want in (("gate_up_scale", gate_up_scale, (E, 2 * nb_i, nb_h)), ("down_scale", down_scale, (E, nb_h, nb_i))):
            if s is None:
                return f"FP8 experts need {name} (fp32 weight_scale_inv of shape {want})"
            if tuple(s.shape) != want or s.dtype != torch.float32 or not s.is_contiguous():
                return f"{name}: expected contiguous float32 {want}, got {s.dtype} {tuple(s.shape)}"
    else:
        if gate_up_EIH.dtype != x_TH.dtype or down_EHI.dtype != x_TH.dtype:
            return f"expert weights are {gate_up_EIH.dtype}/{down_EHI.dtype}, activations {x_TH.dtype}: must match"
        if gate_up_scale is not None or down_scale is not None:
            return "scales were given for non-FP8 expert weights"
    for name, t in (("x", x_TH), ("gate_up", gate_up_EIH), ("down", down_EHI)):
        if not t.is_contiguous():
            return f"{name} must be contiguous (strides {t.stride()})"
    if topk_ids_TK.dim() != 2 or topk_ids_TK.shape[0] != x_TH.shape[0]:
        return f"topk_ids must be (T={x_TH.shape[0]}, K), got {tuple(topk_ids_TK.shape)}"
    if topk_ids_TK.dtype not in (torch.int32, torch.int64):
        return f"topk_ids dtype {topk_ids_TK.dtype}: expected int32 or int64"
    if topk_weights_TK.shape != topk_ids_TK.shape or topk_weights_TK.dtype != torch.float32:
        return (
            f"topk_weights must be float32 {tuple(topk_ids_TK.shape)}, got {topk_weights_TK.dtype} {tuple(topk_weights_TK.shape)}"
        )
    devs = {t.device for t in (x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK)}
    if len(devs) != 1:
        return f"all tensors must be on one device, got {sorted(map(str, devs))}"
    return None


def _check(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale) -> bool:
    """Raise ValueError naming the problem; returns whether the experts are FP8."""
    problem = _problem(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale)
    if problem:
        raise ValueError(problem)
    return gate_up_EIH.dtype == torch.float8_e4m3fn


def unsupported(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    gate_up_scale: Optional[torch.Tensor] = None,
    down_scale: Optional[torch.Tensor] = None,
) -> Optional[str]:
    """Why ``fused_moe`` would refuse this call (Triton missing, tensors where no kernel runs,
    or a shape, dtype or layout it does not serve); None when it serves it. No launch, no sync."""
    return launch_problem(x_TH, gate_up_EIH, down_EHI, topk_ids_TK) or _problem(
        x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale
    )


def _launch_cfg(kind: str, device: torch.device, m: int, fp8: bool, config: Optional[dict[str, Any]]) -> dict[str, Any]:
    cfg = dict(config[kind]) if config and kind in config else load_config(_HERE, device, kind + ("_fp8" if fp8 else ""), m)
    if fp8 and (FP8_BLOCK % cfg["BLOCK_N"] or FP8_BLOCK % cfg["BLOCK_K"]):
        raise ValueError(f"FP8 launch config {cfg}: BLOCK_N and BLOCK_K must divide {FP8_BLOCK}")
    return cfg


def fused_moe(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    gate_up_scale: Optional[torch.Tensor] = None,
    down_scale: Optional[torch.Tensor] = None,
    *,
    config: Optional[dict[str, dict[str, Any]]] = None,
) -> torch.Tensor:
    """Routed experts, combined: (T, H) in x's dtype.

    x_TH (T, H) bf16/fp16/fp32; gate_up_EIH (E, 2I, H) and down_EHI (E, H, I) in x's dtype, or
    float8_e4m3fn with fp32 block scales (``reference.py`` gives the layout); topk_ids_TK (T, K)
    int, topk_weights_TK (T, K) fp32. Expert outputs are rounded to x's dtype, weighted and
    summed over K in fp32 in rank order, then cast, exactly as ``loop_moe``. ``config`` overrides
    the launch configs: {"gate_up"|"down"|"combine": {"BLOCK_M": .., "num_warps": ..}}.
    Expert ids must lie in [0, E); they are not checked (that would need a host sync).
    """
    require_triton(x_TH, gate_up_EIH, down_EHI, topk_ids_TK)
    fp8 = _check(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale)
    from . import kernel

    T, H = x_TH.shape
    E, two_i, _ = gate_up_EIH.shape
    I = two_i // 2
    K = topk_ids_TK.shape[1]
    A = T * K
    out_TH = torch.empty_like(x_TH)
    if T == 0:
        return out_TH
    dev = x_TH.device
    order_A, sorted_tok_A, offsets_E1 = sort_by_expert(topk_ids_TK, E)
    h_AI = torch.empty(A, I, dtype=x_TH.dtype, device=dev)
    y_AH = torch.empty(A, H, dtype=torch.float32, device=dev)
    ieee = x_TH.dtype == torch.float32
    gu_scale = gate_up_scale if fp8 else gate_up_EIH  # unused pointer when not FP8
    dn_scale = down_scale if fp8 else down_EHI

    c1 = _launch_cfg("gate_up", dev, T, fp8, config)
    w1 = {k: c1.pop(k) for k in ("num_warps", "num_stages") if k in c1}
    kernel.moe_gate_up_kernel[(E, -(-I // c1["BLOCK_N"]))](
        x_TH, gate_up_EIH, gu_scale, h_AI, sorted_tok_A, offsets_E1, H, I,
        gate_up_EIH.stride(0), gate_up_EIH.stride(1),
        gu_scale.stride(0), gu_scale.stride(1),
        ACC_IEEE=ieee, W_FP8=fp8, SB=FP8_BLOCK, **c1, **w1,
    )
    c2 = _launch_cfg("down", dev, T, fp8, config)
    w2 = {k: c2.pop(k) for k in ("num_warps", "num_stages") if k in c2}
    kernel.moe_down_kernel[(E, -(-H // c2["BLOCK_N"]))](
        h_AI, down_EHI, dn_scale, y_AH, order_A, topk_weights_TK.reshape(-1).contiguous(), offsets_E1, H, I,
        down_EHI.stride(0), down_EHI.stride(1),
        dn_scale.stride(0), dn_scale.stride(1),
        ACC_IEEE=ieee, W_FP8=fp8, SB=FP8_BLOCK, **c2, **w2,
    )
    c3 = _launch_cfg("combine", dev, T, False, config)
    kernel.moe_combine_kernel[(T, -(-H // c3["BLOCK_H"]))](y_AH, out_TH, H, K=K, **c3)
    return out_TH
