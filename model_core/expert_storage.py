"""How the backbone's routed experts are stored: FP8 in place, and streamed from host memory.

Routed experts are about 95% of the published backbone's weights (16.3B parameters, 1.5B active).
Two low-VRAM modes, which combine:

* **FP8 experts** (``quantize_experts_fp8(model)``, or ``load_backbone(..., experts="fp8")``):
  float8_e4m3fn with one fp32 ``weight_scale_inv`` per 128 x 128 block (``model_core.fp8``),
  quantized in place one expert at a time, the high-precision copies freed. The Triton backend
  runs them directly (``fused_moe`` with the scales); the ``loop`` backend dequantizes each
  expert that received tokens just before its GEMMs.
* **Expert offload** (``offload_experts(model, device)``, or ``load_backbone(...,
  expert_offload=True)``): everything but the routed experts goes to ``device``; the experts stay
  in host memory (pinned when ``device`` is CUDA) and each MoE layer's experts are copied into a
  small ring of reusable device buffers (``slots``, default 2) just before the layer runs, the next
  layer's copy issued at once on a side CUDA stream so that it overlaps the current layer. On the
  CPU the same code runs with plain copies, so the logic is tested without a GPU. Offloaded
  layers run eagerly: the copies are not part of a captured CUDA graph.

``backbone_memory(model)`` says how many bytes each part takes on the device, for reports of
peak memory per mode.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .moe import ExpertTensors, StackedExperts

__all__ = [
    "quantize_experts_fp8",
    "dequantize_experts_fp8",
    "routed_experts",
    "offload_experts",
    "ExpertStreamer",
    "LayerSource",
    "backbone_memory",
]


def routed_experts(model: nn.Module) -> list[StackedExperts]:
    """Every ``StackedExperts`` of ``model``, in layer order."""
    return [m for m in model.modules() if isinstance(m, StackedExperts)]


def _not_offloaded(model: nn.Module, what: str) -> list[StackedExperts]:
    experts = routed_experts(model)
    if any(e.source is not None for e in experts):
        raise ValueError(f"{what}: the experts are offloaded and their stream buffers have the old storage; call it before offload_experts")
    return experts


def quantize_experts_fp8(model: nn.Module) -> nn.Module:
    """Convert every routed expert of ``model`` in place to block-scaled FP8 (layer by layer, so
    the extra memory is one layer's FP8 copy); returns ``model``. Already-FP8 layers are left as
    they are. ValueError naming the layer when a weight holds inf or NaN."""
    for i, experts in enumerate(_not_offloaded(model, "quantize_experts_fp8")):
        try:
            experts.to_fp8()
        except ValueError as exc:
            raise ValueError(f"routed experts of MoE layer {i}: {exc}") from None
    return model


def dequantize_experts_fp8(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Convert FP8 routed experts of ``model`` in place back to ``dtype``; returns ``model``."""
    for experts in _not_offloaded(model, "dequantize_experts_fp8"):
        experts.to_high_precision(dtype)
    return model


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class ExpertStreamer:
    """Copies each MoE layer's experts from their storage into a ring of ``slots`` device buffers.

    ``fetch(i)`` (called by layer i's ``StackedExperts.source``) returns layer i's tensors in a
    device buffer: already there when it was prefetched, copied now otherwise; then, with two or
    more slots, it starts copying the next layer (after the last: the first, for the next forward)
    into a slot other than the one layer i runs from. On CUDA the copies run on a side stream: a
    copy waits for the compute that used its slot before, and the compute waits for its copy.
    """

    def __init__(self, experts: list[StackedExperts], device: torch.device, slots: int = 2) -> None:
        if not experts:
            raise ValueError("the model has no routed experts to stream")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots={slots!r}: must be an int >= 1 (2 overlaps copies with compute)")
        self.experts = experts
        self.device = torch.device(device)
        first = experts[0].stored()
        self.buffers = [
            ExpertTensors(*(None if t is None else torch.empty(t.shape, dtype=t.dtype, device=self.device) for t in first))
            for _ in range(min(slots, len(experts)))
        ]
        self.holds: list[Optional[int]] = [None] * len(self.buffers)  # layer index held by each slot
        self.ready: list[Optional[torch.cuda.Event]] = [None] * len(self.buffers)
        self.current: Optional[int] = None  # the slot the running layer reads
        self.last: int = -1  # the slot most recently filled
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def device_bytes(self) -> int:
        return sum(_nbytes(b) for b in self.buffers)

    def fetch(self, i: int) -> ExpertTensors:
        """Layer i's experts in a device buffer, ready for the current stream."""
        self.current = None  # no layer is running from a slot of this streamer right now
        slot = self._load(i)
        if self.ready[slot] is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready[slot])
        self.current = slot
        if len(self.buffers) > 1:
            self._load((i + 1) % len(self.experts))
        return self.buffers[slot]

    def _load(self, i: int) -> int:
        """Start copying layer i into a free slot unless a slot holds it; returns that slot."""
        if i in self.holds:
            return self.holds.index(i)
        slot = (self.last + 1) % len(self.buffers)
        if slot == self.current and len(self.buffers) > 1:  # a prefetch must not overwrite the running layer
            slot = (slot + 1) % len(self.buffers)
        self.last = slot
        source, target = self.experts[i].stored(), self.buffers[slot]
        pairs = [(dst, src) for dst, src in zip(target, source) if dst is not None]
        if self.copy_stream is None:
            for dst, src in pairs:
                dst.copy_(src)
        else:
            compute = torch.cuda.current_stream(self.device)
            freed = torch.cuda.Event()
            freed.record(compute)  # all work queued so far, including the slot's last reader
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(freed)
                for dst, src in pairs:
                    dst.copy_(src, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.copy_stream)
            self.ready[slot] = done
        self.holds[slot] = i
        return slot


class LayerSource:
    """``StackedExperts.source`` of an offloaded layer: ``streamer.fetch(index)``."""

    def __init__(self, streamer: ExpertStreamer, index: int) -> None:
        self.streamer = streamer
        self.index = index

    def __call__(self) -> ExpertTensors:
        return self.streamer.fetch(self.index)


def _move_dense(model: nn.Module, device: torch.device) -> None:
    """Every parameter and buffer except the routed experts' onto ``device``."""
    for module in model.modules():
        if isinstance(module, StackedExperts):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(device)
        for name, b in list(module.named_buffers(recurse=False)):
            setattr(module, name, b.to(device))


def offload_experts(model: nn.Module, device: str | torch.device, *, slots: int = 2) -> ExpertStreamer:
    """Run ``model`` on ``device`` with its routed experts kept in host memory (pinned when
    ``device`` is CUDA) and streamed per layer into ``slots`` reusable device buffers. The
    outputs are the same as without offload. Returns the streamer (its ``device_bytes()`` is the
    buffers' size). Calling it again re-offloads (e.g. after ``model.to(device)``)."""
    device = torch.device(device)
    experts = routed_experts(model)
    with torch.no_grad():
        _move_dense(model, device)
        for module in experts:
            host = [None if t is None else t.detach().to("cpu") for t in module.stored()]
            if device.type == "cuda":
                host = [None if t is None else t.pin_memory() for t in host]
            module.set_storage(ExpertTensors(*host))
    streamer = ExpertStreamer(experts, device, slots)
    for i, module in enumerate(experts):
        module.source = LayerSource(streamer, i)
    # the copies follow host-side bookkeeping (which slot holds which layer): a captured CUDA
    # graph would replay stale choices, so the static loop runs this model eagerly
    model.graph_safe = False
    return streamer


def backbone_memory(model: nn.Module) -> dict[str, int]:
    """Bytes of the backbone's weights by role. ``dense``: every parameter and buffer but the
    routed experts; ``experts``: routed experts held with the model (0 when offloaded);
    ``expert_buffers``: the streaming buffers on the device; ``offloaded``: routed experts in host
    memory; ``device_total``: what the weights occupy on the compute device (dense + experts +
    expert_buffers). Activations and the KV cache are not counted."""
    expert_ids: set[int] = set()
    held = offloaded = 0
    streamers: dict[int, ExpertStreamer] = {}
    for module in routed_experts(model):
        stored = [t for t in module.stored() if t is not None]
        expert_ids.update(id(t) for t in stored)
        if isinstance(module.source, LayerSource):
            offloaded += _nbytes(stored)
            streamers[id(module.source.streamer)] = module.source.streamer
        else:
            held += _nbytes(stored)
    weights = [*model.parameters(), *model.buffers()]
    dense = _nbytes(t for t in weights if id(t) not in expert_ids)
    buffers = sum(s.device_bytes() for s in streamers.values())
    return {"dense": dense, "experts": held, "expert_buffers": buffers, "offloaded": offloaded,
            "device_total": dense + held + buffers}
