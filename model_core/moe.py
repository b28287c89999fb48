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

Routed experts may be stored in FP8 (float8_e4m3fn with 128 x 128 fp32 block scales, see
``model_core.fp8`` and ``model_core.expert_storage``); a backend then also gets
``gate_up_scale`` and ``down_scale``. They may also be streamed from host memory layer by layer
(``StackedExperts.source``, set by ``model_core.expert_storage.offload_experts``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig
from .fp8 import FP8_DTYPE, dequantize_blockwise_fp8, dequantize_gate_up_fp8, quantize_blockwise_fp8, quantize_gate_up_fp8, scale_shape
from .kernel_choice import kernel_module, kernel_serves, kernel_wanted
from .layers.mlp import SwiGLU

__all__ = [
    "Router",
    "StackedExperts",
    "ExpertTensors",
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
        self.kernel: Optional[bool] = None  # None: the routing kernel where it serves (CUDA); True / False: forced

    def _use_kernel(self, logits_TE: torch.Tensor) -> bool:
        args = (logits_TE, self.expert_bias, self.n_group, self.topk_group, self.top_k)
        return kernel_wanted(self.kernel, "routing", logits_TE.is_cuda, *args)

    def forward(self, x_TH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, H) -> topk_ids (T, K) int64, topk_weights (T, K) fp32, router_logits (T, E) fp32."""
        logits_TE = F.linear(x_TH.float(), self.weight.float())
        if self._use_kernel(logits_TE):  # sigmoid, bias, group-limited top-k and weights in one launch
            ids_TK, w_TK = kernel_module("routing").group_topk_route(
                logits_TE, self.expert_bias, self.n_group, self.topk_group, self.top_k, self.scaling
            )
            return ids_TK, w_TK, logits_TE
        scores_TE = torch.sigmoid(logits_TE)
        topk_ids_TK = group_limited_topk(scores_TE + self.expert_bias, self.n_group, self.topk_group, self.top_k)
        w_TK = scores_TE.gather(1, topk_ids_TK)
        if self.top_k > 1:
            w_TK = w_TK / (w_TK.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_ids_TK, w_TK * self.scaling, logits_TE


class ExpertTensors(NamedTuple):
    """What a MoE backend runs with: the stacked weights and, for FP8 storage, their fp32 block
    scales (``weight_scale_inv``; None for high-precision storage)."""

    gate_up: torch.Tensor
    down: torch.Tensor
    gate_up_scale: Optional[torch.Tensor] = None
    down_scale: Optional[torch.Tensor] = None


class StackedExperts(nn.Module):
    """All routed SwiGLU experts as two stacked weights (checkpoint name ``mlp.experts``).

    High-precision storage: ``gate_up_proj`` (E, 2I, H) and ``down_proj`` (E, H, I) in the model's
    dtype; the buffers ``gate_up_scale`` and ``down_scale`` are None (absent from the state dict).
    FP8 storage (:meth:`to_fp8`): both parameters float8_e4m3fn, ``gate_up_scale``
    (E, 2 * ceil(I/128), ceil(H/128)) and ``down_scale`` (E, ceil(H/128), ceil(I/128)) fp32
    (``model_core.fp8`` gives the layout). FP8 storage keeps its dtypes through ``module.to(dtype)``;
    only the device changes. ``source``, when set (``expert_storage.offload_experts``), returns
    the tensors to run with instead of the stored ones.
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.register_buffer("gate_up_scale", None)
        self.register_buffer("down_scale", None)
        self.source: Optional[Callable[[], ExpertTensors]] = None

    @property
    def is_fp8(self) -> bool:
        return self.gate_up_proj.dtype == FP8_DTYPE

    def stored(self) -> ExpertTensors:
        """The stored tensors (in host memory when the experts are offloaded)."""
        return ExpertTensors(self.gate_up_proj, self.down_proj, self.gate_up_scale, self.down_scale)

    def tensors(self) -> ExpertTensors:
        """The tensors a forward runs with: ``source()`` when set, else the stored ones."""
        return self.source() if self.source is not None else self.stored()

    def set_storage(self, t: ExpertTensors) -> None:
        """Replace the stored tensors (the old ones are freed unless referenced elsewhere)."""
        self.gate_up_proj = nn.Parameter(t.gate_up, requires_grad=False)
        self.down_proj = nn.Parameter(t.down, requires_grad=False)
        self.gate_up_scale = t.gate_up_scale
        self.down_scale = t.down_scale

    @torch.no_grad()
    def to_fp8(self) -> None:
        """Quantize the experts in place, one expert at a time (gate and up separately); on the
        meta device only the FP8 storage's shapes are made. No-op when already FP8."""
        if self.is_fp8:
            return
        gu, dn = self.gate_up_proj, self.down_proj
        E, two_i, H = gu.shape
        I = two_i // 2
        nb_i, nb_h = scale_shape(I, H)
        new = ExpertTensors(
            torch.empty(gu.shape, dtype=FP8_DTYPE, device=gu.device),
            torch.empty(dn.shape, dtype=FP8_DTYPE, device=dn.device),
            torch.empty(E, 2 * nb_i, nb_h, dtype=torch.float32, device=gu.device),
            torch.empty(E, nb_h, nb_i, dtype=torch.float32, device=dn.device),
        )
        if not gu.is_meta:
            for e in range(E):
                q, s = quantize_gate_up_fp8(gu[e])
                new.gate_up[e].copy_(q)
                new.gate_up_scale[e].copy_(s)
                q, s = quantize_blockwise_fp8(dn[e])
                new.down[e].copy_(q)
                new.down_scale[e].copy_(s)
        self.set_storage(new)

    @torch.no_grad()
    def to_high_precision(self, dtype: torch.dtype) -> None:
        """Dequantize FP8 storage in place to ``dtype`` (one expert at a time). No-op when not FP8."""
        if not self.is_fp8:
            return
        t = self.stored()
        gu = torch.empty(t.gate_up.shape, dtype=dtype, device=t.gate_up.device)
        dn = torch.empty(t.down.shape, dtype=dtype, device=t.down.device)
        if not gu.is_meta:
            for e in range(self.num_experts):
                gu[e].copy_(dequantize_gate_up_fp8(t.gate_up[e], t.gate_up_scale[e], dtype))
                dn[e].copy_(dequantize_blockwise_fp8(t.down[e], t.down_scale[e], dtype))
        self.set_storage(ExpertTensors(gu, dn))

    def _apply(self, fn, recurse=True):
        """``module.to(dtype)``/``.half()`` must not cast FP8 weights or their fp32 scales: they
        keep their dtypes and follow only the device change."""
        if not self.is_fp8:
            return super()._apply(fn, recurse)
        kept = ExpertTensors(*(None if t is None else t.detach() for t in self.stored()))  # the old storage
        super()._apply(fn, recurse)
        now = self.stored()
        if any(a is not None and a.dtype != b.dtype for a, b in zip(kept, now)):
            self.set_storage(ExpertTensors(*(None if a is None else a.to(b.device) for a, b in zip(kept, now))))
        return self


MoeFn = Callable[..., torch.Tensor]
"""A routed-expert backend: ``fn(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK)``, and
for FP8 experts also ``gate_up_scale, down_scale`` (positional)."""


def _check_scales(gate_up: torch.Tensor, down: torch.Tensor, gate_up_scale, down_scale) -> bool:
    """Whether the experts are FP8; ValueError when weights and scales do not go together."""
    fp8 = gate_up.dtype == FP8_DTYPE
    if fp8 != (down.dtype == FP8_DTYPE):
        raise ValueError(f"gate_up is {gate_up.dtype} but down is {down.dtype}: both FP8 or neither")
    if fp8 and (gate_up_scale is None or down_scale is None):
        raise ValueError("FP8 experts need gate_up_scale and down_scale (their fp32 weight_scale_inv)")
    if not fp8 and (gate_up_scale is not None or down_scale is not None):
        raise ValueError(f"scales were given for {gate_up.dtype} experts; only float8_e4m3fn experts take scales")
    return fp8


def _expert_weights(t: ExpertTensors, e: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e's (2I, H) and (H, I) weights; FP8 ones dequantized (fp32, then cast to ``dtype``)."""
    if t.gate_up_scale is None:
        return t.gate_up[e], t.down[e]
    gate_up = dequantize_gate_up_fp8(t.gate_up[e], t.gate_up_scale[e], dtype)
    return gate_up, dequantize_blockwise_fp8(t.down[e], t.down_scale[e], dtype)


def loop_moe(
    x_TH: torch.Tensor,
    gate_up_EIH: torch.Tensor,
    down_EHI: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    gate_up_scale: Optional[torch.Tensor] = None,
    down_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference routed-expert combination: sort assignments by expert, one GEMM pair per expert
    that received tokens, weighted sum over the top-k in fp32 (rank order), cast to x's dtype.
    FP8 experts: each expert that received tokens is dequantized just before its GEMMs."""
    _check_scales(gate_up_EIH, down_EHI, gate_up_scale, down_scale)
    experts = ExpertTensors(gate_up_EIH, down_EHI, gate_up_scale, down_scale)
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
        gate_up_IH, down_HI = _expert_weights(experts, e, x_TH.dtype)
        xe = xs_AH[start : start + n]
        gu = F.linear(xe, gate_up_IH)  # (n, 2I)
        h = F.silu(gu[:, :I]) * gu[:, I:]
        out_AH[start : start + n] = F.linear(h, down_HI)
        start += n
    y_AH = torch.empty_like(out_AH)
    y_AH[order_A] = out_AH
    y_TKH = y_AH.view(T, K, -1).float() * topk_weights_TK.unsqueeze(-1)
    return y_TKH.sum(dim=1).to(x_TH.dtype)


def triton_moe(
    x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale=None, down_scale=None
) -> torch.Tensor:
    """The fused Triton MoE (``lladauni.kernels.moe``): no host sync, CUDA-graph safe; FP8 experts
    go with their scales. Raises where the kernel does not serve the call; ``auto`` asks first
    and uses ``loop`` instead."""
    op = kernel_module("moe")
    if op is None:
        raise RuntimeError("the MoE kernel failed to import (see the warning above); use moe='loop'")
    return op.fused_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale)


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
    gate_up_scale: Optional[torch.Tensor] = None,
    down_scale: Optional[torch.Tensor] = None,
    *,
    kernel_device: Optional[bool] = None,
) -> tuple[str, MoeFn]:
    """The backend ``auto`` runs for this call: the fused kernel when the tensors are on CUDA
    (``kernel_device``, default ``x_TH.is_cuda``) and it serves them, ``loop`` otherwise."""
    on_device = x_TH.is_cuda if kernel_device is None else kernel_device
    args = (x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale)
    if kernel_serves("moe", on_device, *args):
        return "triton", triton_moe
    return "loop", loop_moe


def _auto_moe(x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale=None, down_scale=None) -> torch.Tensor:
    """Decided per call (``choose_moe``)."""
    args = (x_TH, gate_up_EIH, down_EHI, topk_ids_TK, topk_weights_TK, gate_up_scale, down_scale)
    return choose_moe(*args)[1](*args)


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
        t = self.experts.tensors()
        if t.gate_up_scale is None:
            y_TH = self.backend(x_TH, t.gate_up, t.down, topk_ids_TK, topk_w_TK)
        else:  # FP8 experts: the backend also gets the block scales
            y_TH = self.backend(x_TH, t.gate_up, t.down, topk_ids_TK, topk_w_TK, t.gate_up_scale, t.down_scale)
        y = y_TH.view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y
