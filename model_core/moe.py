"""Mixture-of-experts block of the backbone: sigmoid group-limited router, stacked routed experts
and one shared expert (MODEL_SPEC §4.2).

Routed experts are held stacked, ``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I), so a
fused kernel can take them as they are. The checkpoint stores them per expert
(``experts.N.{gate,up,down}_proj.weight``); ``model_core.checkpoint`` converts at load and back
at save.

How the routed experts are run is a named backend (``loop``, plain PyTorch; ``triton``, the fused
kernel of ``lladauni.kernels`` pulled by capability; ``auto`` chooses per call). Every backend gets the same routing and must return the same
combination: expert outputs in the activation dtype, weighted and summed over the top-k in fp32
in rank order, then cast back, as the official ``moe_infer`` does.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig
from .kernel_choice import kernel_module, kernel_serves
from .layers.mlp import SwiGLU

__all__ = [
    "Router",
    "StackedExperts",
    "SparseMoeBlock",
    "group_limited_topk",
    "loop_moe",
    "register_moe_backend",
    "get_moe_backend",
    "moe_backends",
    "choose_moe",
    "triton_moe",
]


def group_limited_topk(scores_TE: torch.Tensor, n_group: int, topk_group: int, top_k: int) -> torch.Tensor:
    """Indices (T, K) of the top_k experts among the topk_group best groups.

    A group's score is the sum of its two best expert scores; experts of the other groups are
    excluded. Indices come sorted by descending score (``torch.topk`` order).
    """
    T, E = scores_TE.shape
    group_scores_TG = scores_TE.view(T, n_group, E // n_group).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx_TGk = torch.topk(group_scores_TG, k=topk_group, dim=-1, sorted=False)[1]
    group_mask_TG = torch.zeros_like(group_scores_TG, dtype=torch.bool).scatter_(1, group_idx_TGk, True)
    expert_mask_TE = group_mask_TG.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, E)
    masked_TE = scores_TE.masked_fill(~expert_mask_TE, float("-inf"))
    return torch.topk(masked_TE, k=top_k, dim=-1)[1]


class Router(nn.Module):
    """Sigmoid router with an aux-loss-free selection bias (checkpoint name ``mlp.gate``).

    weight: (E, H); expert_bias: (E,) buffer, used to *select* experts only. The combine weights
    are the unbiased sigmoid scores of the chosen experts, renormalised (top_k > 1) and scaled
    by ``routed_scaling_factor``. All routing math is fp32.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.scaling = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))

    def forward(self, x_TH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, H) -> topk_ids (T, K) int64, topk_weights (T, K) fp32, router_logits (T, E) fp32."""
        logits_TE = F.linear(x_TH.float(), self.weight.float())
        scores_TE = torch.sigmoid(logits_TE)
        topk_ids_TK = group_limited_topk(scores_TE + self.expert_bias, self.n_group, self.topk_group, self.top_k)
        w_TK = scores_TE.gather(1, topk_ids_TK)
        if self.top_k > 1:
            w_TK = w_TK / (w_TK.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_ids_TK, w_TK * self.scaling, logits_TE


class StackedExperts(nn.Module):
    """All routed SwiGLU experts as two stacked weights (checkpoint name ``mlp.experts``)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))


MoeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def loop_moe(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
) -> torch.Tensor:
    """Reference routed-expert combination: sort assignments by expert, one GEMM pair per expert
    that received tokens, weighted sum over the top-k in fp32 (rank order), cast to x's dtype."""
    T, K = topk_ids_TK.shape
    I = gate_up_EIH.shape[1] // 2
    flat_ids_A = topk_ids_TK.reshape(-1)  # A = T*K assignments
    order_A = torch.argsort(flat_ids_A, stable=True)
    counts = torch.bincount(flat_ids_A, minlength=gate_up_EIH.shape[0]).tolist()
    xs_AH = x_TH[order_A // K]
    out_AH = torch.empty_like(xs_AH)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        xe = xs_AH[start : start + n]
        gu = F.linear(xe, gate_up_EIH[e])  # (n, 2I)
        h = F.silu(gu[:, :I]) * gu[:, I:]
        out_AH[start : start + n] = F.linear(h, down_EHI[e])
        start += n
    y_AH = torch.empty_like(out_AH)
    y_AH[order_A] = out_AH
    y_TKH = y_AH.view(T, K, -1).float() * topk_weights_TK.unsqueeze(-1)
    return y_TKH.sum(dim=1).to(x_TH.dtype)


def triton_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK) -> torch.Tensor:
    """The fused Triton MoE (``lladauni.kernels.moe``): no host sync, CUDA-graph safe. Raises
    where the kernel does not serve the call; ``auto`` asks first and uses ``loop`` instead."""
    op = kernel_module("moe")
    if op is None:
        raise RuntimeError("the MoE kernel failed to import (see the warning above); use moe='loop'")
    return op.fused_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK)


_MOE_BACKENDS: dict[str, MoeFn] = {"loop": loop_moe}


def _add_kernel_backends() -> None:
    op = kernel_module("moe")
    if op is not None and op.HAS_TRITON:
        _MOE_BACKENDS.setdefault("triton", triton_moe)


def register_moe_backend(name: str, fn: MoeFn) -> None:
    """Add (or replace) a MoE backend under ``name`` (any callable with ``loop_moe``'s signature)."""
    if name == "auto":
        raise ValueError("'auto' is reserved")
    _MOE_BACKENDS[name] = fn


def moe_backends() -> list[str]:
    _add_kernel_backends()
    return sorted(_MOE_BACKENDS)


def choose_moe(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    *,
    kernel_device: Optional[bool] = None,
) -> tuple[str, MoeFn]:
    """The backend ``auto`` runs for this call: the fused kernel when the tensors are on CUDA
    (``kernel_device``, default ``x_TH.is_cuda``) and it serves them, ``loop`` otherwise."""
    on_device = x_TH.is_cuda if kernel_device is None else kernel_device
    if kernel_serves("moe", on_device, x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK):
        return "triton", triton_moe
    return "loop", loop_moe


def _auto_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK) -> torch.Tensor:
    """Decided per call (``choose_moe``)."""
    fn = choose_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK)[1]
    return fn(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK)


def get_moe_backend(name: str) -> MoeFn:
    """Resolve a backend name; ``auto`` chooses per call (``choose_moe``)."""
    if name == "auto":
        return _auto_moe
    _add_kernel_backends()
    try:
        return _MOE_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown MoE backend {name!r}; choose one of {['auto'] + moe_backends()}") from None


class SparseMoeBlock(nn.Module):
    """Routed experts plus the shared expert (checkpoint name ``mlp`` on layers >= first_k_dense_replace)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.gate = Router(config)
        self.experts = StackedExperts(config.num_experts, config.hidden_size, config.moe_intermediate_size)
        self.shared_experts = (
            SwiGLU(config.hidden_size, config.shared_intermediate_size) if config.num_shared_experts > 0 else None
        )
        self.backend: MoeFn = get_moe_backend("auto")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> (..., H)."""
        shape = x.shape
        x_TH = x.reshape(-1, shape[-1])
        topk_ids_TK, topk_w_TK, _ = self.gate(x_TH)
        y_TH = self.backend(x_TH, self.experts.gate_up_proj, self.experts.down_proj, topk_ids_TK, topk_w_TK)
        y = y_TH.view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y
