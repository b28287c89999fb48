"""Host wrapper of the fused MoE router: checks, one launch.

``group_topk_route`` takes the router's fp32 logits (the GEMM stays in cuBLAS) and returns the
expert ids and combine weights of LLaDA2.0-Uni's sigmoid group-limited routing (DeepSeek-V3
style). ``unsupported`` says, from metadata alone, why a call would be refused. No host sync:
the grid depends only on shapes, so a step that calls it can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._triton import HAS_TRITON, NO_TRITON, interpreting, launch_problem, require_triton

__all__ = ["group_topk_route", "unsupported", "MAX_TILE", "MAX_TOP_K", "HAS_TRITON", "NO_TRITON"]

MAX_TILE = 4096  # padded experts per token held by one program
MAX_TOP_K = 32  # experts picked per token (the pick loop is unrolled)
IDS_DTYPES = (torch.int64, torch.int32)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _shape_problem(E: int, n_group: int, topk_group: int, top_k: int) -> Optional[str]:
    """Why these routing sizes are not served, or None."""
    if n_group < 1 or E % n_group:
        return f"n_group={n_group} must divide the {E} experts; set n_group to a divisor of num_experts"
    per = E // n_group
    if per < 2:
        return f"{E} experts in n_group={n_group} groups leave {per} per group; the group score needs at least 2"
    if not 1 <= topk_group <= n_group:
        return f"topk_group={topk_group} must lie in [1, n_group={n_group}]"
    if not 1 <= top_k <= min(topk_group * per, MAX_TOP_K):
        return (
            f"top_k={top_k} must lie in [1, {min(topk_group * per, MAX_TOP_K)}] "
            f"(topk_group*experts per group = {topk_group * per}; this kernel's MAX_TOP_K = {MAX_TOP_K})"
        )
    tile = _next_pow2(n_group) * _next_pow2(per)
    if tile > MAX_TILE:
        return f"{E} experts in {n_group} groups pad to a tile of {tile} > MAX_TILE={MAX_TILE}; raise MAX_TILE in {__name__}"
    return None


def _problem(logits_TE: torch.Tensor, expert_bias_E: torch.Tensor, n_group: int, topk_group: int, top_k: int) -> Optional[str]:
    """Why these tensors and sizes are not a valid call, or None (metadata only)."""
    if logits_TE.dim() != 2 or logits_TE.dtype != torch.float32:
        return f"logits must be float32 (T, E), got {logits_TE.dtype} {tuple(logits_TE.shape)}"
    if logits_TE.shape[1] > 1 and logits_TE.stride(1) != 1:
        return f"logits must have unit stride over experts (strides {logits_TE.stride()}); pass logits.contiguous()"
    E = logits_TE.shape[1]
    if expert_bias_E.shape != (E,) or not expert_bias_E.is_floating_point() or not expert_bias_E.is_contiguous():
        return f"expert_bias must be a contiguous float ({E},) tensor, got {expert_bias_E.dtype} {tuple(expert_bias_E.shape)}"
    if expert_bias_E.device != logits_TE.device:
        return f"logits on {logits_TE.device} but expert_bias on {expert_bias_E.device}: put both on one device"
    return _shape_problem(E, n_group, topk_group, top_k)


def unsupported(
    logits_TE: torch.Tensor, expert_bias_E: torch.Tensor, n_group: int, topk_group: int, top_k: int
) -> Optional[str]:
    """Why ``group_topk_route`` would refuse this call (Triton missing, tensors where no kernel
    runs, or a shape, dtype or layout it does not serve); None when it serves it. No launch, no sync."""
    return launch_problem(logits_TE, expert_bias_E) or _problem(logits_TE, expert_bias_E, n_group, topk_group, top_k)


def group_topk_route(
    logits_TE: torch.Tensor,
    expert_bias_E: torch.Tensor,
    n_group: int,
    topk_group: int,
    top_k: int,
    routed_scaling_factor: float = 1.0,
    *,
    ids_dtype: torch.dtype = torch.int64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid group-limited top-k routing: (topk_ids (T, K) ``ids_dtype``, topk_weights (T, K) fp32).

    scores = sigmoid(logits); biased = scores + expert_bias; a group's score is the sum of its
    two best biased scores; the topk_group best groups are kept; the top_k best biased experts
    among them are returned by descending biased score. Ties go to the lower group / expert
    index (a stable descending sort; ``torch.topk``'s tie order is unspecified). Weights are the
    unbiased scores of the chosen experts, divided by their sum + 1e-20 when top_k > 1, times
    ``routed_scaling_factor``. ``ids_dtype`` is int64 (what ``torch.topk`` gives) or int32.
    Ids are always in [0, E), even for NaN logits (whose choice is then unspecified).
    """
    require_triton(logits_TE, expert_bias_E)
    problem = _problem(logits_TE, expert_bias_E, n_group, topk_group, top_k)
    if problem:
        raise ValueError(problem)
    if ids_dtype not in IDS_DTYPES:
        raise ValueError(f"ids_dtype {ids_dtype}: expected one of {IDS_DTYPES}")
    from . import kernel

    T, E = logits_TE.shape
    per = E // n_group
    ids_TK = torch.empty(T, top_k, dtype=ids_dtype, device=logits_TE.device)
    w_TK = torch.empty(T, top_k, dtype=torch.float32, device=logits_TE.device)
    if T:
        bg, bp = _next_pow2(n_group), _next_pow2(per)
        kernel.group_topk_route_kernel[(T,)](
            logits_TE, expert_bias_E, ids_TK, w_TK, logits_TE.stride(0), float(routed_scaling_factor),
            E=E, G=n_group, P=per, TOPK_GROUP=topk_group, K=top_k,
            BLOCK_G=bg, BLOCK_P=bp, BLOCK_K=_next_pow2(top_k),
            PRECISE=not interpreting(), num_warps=min(max(bg * bp // 512, 1), 4),
        )
    return ids_TK, w_TK
