"""Fixed-shape denoising steps over a preallocated KV cache, captured once as CUDA graphs.

The exact cache (``cache="exact"``) grows by concatenation, so every block has new shapes and
every step is ~1,700 separate kernel launches and a few host syncs. ``cache="static"`` runs the
same algorithm with nothing whose shape depends on the block:

- the cache is one ``StaticKVCache`` per generation shape (rows x capacity), written in place:
  each step writes the active block's keys/values at its buffer positions, committing a block
  rewrites them with its final tokens;
- the sequence, the rows' prompts, positions and padding live on the device; the active block
  is found from one 0-dim ``start`` tensor, the commit quota from one 0-dim ``quota`` tensor;
- guidance, sampling (greedy) and the quota/threshold commit run on the device
  (``quota_transfer_on_device``); the step writes a two-number status (masks left, stop
  token committed) that the host reads one step late, while the next step runs.

On CUDA the step and the block commit are each captured once (``torch.cuda.CUDAGraph``) and
replayed for every step of every block, CFG rows included. Anywhere else, or when capture is
turned off or fails (a backend that syncs, such as the ``loop`` MoE), the very same functions
run eagerly, which is what the CPU tests check token for token against the exact cache.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..backbone import KVCache, LLaDA2Backbone, StaticKVCache
from ..layers.attention import AttentionMask
from .sampling import guide_logits, quota_transfer_on_device, sample_tokens

__all__ = ["StepSpec", "StaticStepper", "graphs_enabled", "capacity_for", "weights_key"]

log = logging.getLogger("lladauni.generation")

# Capacities are rounded up to this many positions, so generations of similar lengths share one
# captured graph; the masked tail costs attention reads only.
CAPACITY_QUANTUM = 256


def capacity_for(total: int) -> int:
    """Static cache capacity for a ``total``-position sequence."""
    return -(-total // CAPACITY_QUANTUM) * CAPACITY_QUANTUM


def graphs_enabled(device: torch.device, model: Optional[torch.nn.Module] = None) -> bool:
    """CUDA graphs for the static loop: on CUDA unless ``LLADAUNI_CUDA_GRAPHS=0`` or the model says
    its forward cannot be replayed (``graph_safe = False``: experts streamed from host memory,
    whose copies follow host-side bookkeeping)."""
    if model is not None and not getattr(model, "graph_safe", True):
        return False
    return device.type == "cuda" and os.environ.get("LLADAUNI_CUDA_GRAPHS", "1") != "0"


def weights_key(model: torch.nn.Module) -> tuple:
    """The addresses of the model's parameters and buffers, and its backend choices. A captured
    graph reads the weights where they were at capture and replays the kernels chosen then, so new
    weights (FP8 conversion, offload, a reload) or ``set_backends`` need a new capture."""
    backends = tuple(getattr(model, f"{k}_backend", None) for k in ("attn", "moe", "norm", "routing"))
    return backends + tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


@dataclass(frozen=True)
class StepSpec:
    """What a captured step bakes in; a stepper serves one spec."""

    rows: int
    capacity: int
    block: int
    guidance: tuple  # (kind, scale, text_scale, image_scale, rescale) or () without guidance
    image_only: bool
    image_offset: int
    threshold: float
    greedy: bool
    mask_id: int
    stops: tuple[int, ...]


class _Guidance:
    """The guidance numbers of a spec in the shape ``guide_logits`` reads."""

    def __init__(self, g: tuple) -> None:
        self.active = bool(g)
        if g:
            self.kind, self.scale, self.text_scale, self.image_scale, self.rescale = g


class StaticStepper:
    """Device buffers and the (captured) step functions for one ``StepSpec``."""

    def __init__(self, model: LLaDA2Backbone, spec: StepSpec, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.spec = spec
        self.device = device
        R, C, B = spec.rows, spec.capacity, spec.block
        self.cache = StaticKVCache.allocate(model.config, R, C, dtype=dtype, device=device)
        self.seq = torch.full((C,), spec.mask_id, dtype=torch.long, device=device)
        self.row_ids = torch.zeros(R, C, dtype=torch.long, device=device)
        self.is_prompt = torch.zeros(C, dtype=torch.bool, device=device)
        self.positions = torch.zeros(R, C, dtype=torch.long, device=device)
        self.row_valid = torch.zeros(R, C, dtype=torch.bool, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.quota = torch.zeros((), dtype=torch.long, device=device)
        self.key_positions = torch.arange(C, device=device)
        self.block_offsets = torch.arange(B, device=device)
        self.stops = torch.tensor(spec.stops, dtype=torch.long, device=device)
        self.status = torch.zeros(2, dtype=torch.long, device=device)  # masks left, stop committed
        self.commit = torch.zeros(B, dtype=torch.bool, device=device)
        self.prob = torch.zeros(B, dtype=torch.float32, device=device)
        self._guidance = _Guidance(spec.guidance)
        self.use_graphs = graphs_enabled(device, model)
        self.weights = weights_key(model)
        self._graphs: dict[str, tuple[torch.cuda.CUDAGraph, object]] = {}
        self._pool = None
        self._host_status = torch.zeros(2, 2, dtype=torch.long, pin_memory=device.type == "cuda")
        self._events: list[Optional[torch.cuda.Event]] = [None, None]

    @property
    def captured(self) -> list[str]:
        """The step functions replayed from CUDA graphs (none on the CPU or after a fallback)."""
        return sorted(self._graphs) if self.use_graphs else []

    # ------------------------------------------------------------------ state
    def load(self, x: torch.Tensor, prompts: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
             prefill: Optional[KVCache]) -> None:
        """One generation's inputs: the sequence x (total,), the rows' prompts (R, P), positions
        and key validity (R, total), and the prefilled keys/values of the prompt's whole blocks."""
        total, P = x.shape[0], prompts.shape[1]
        # positions past ``total`` (or past P for the prompts) keep what an earlier run left: no
        # step of this run reads them (active blocks end at ``total``, the prompt overlay at P)
        self.seq[:total].copy_(x)
        self.row_ids[:, :P].copy_(prompts)
        self.is_prompt.zero_()
        self.is_prompt[:P] = True
        self.positions[:, :total].copy_(positions)
        self.row_valid[:, :total].copy_(valid)
        if prefill is not None:
            n = prefill.length
            for layer, (k, v) in enumerate(zip(prefill.keys, prefill.values)):
                self.cache.keys[layer][:, :, :n].copy_(k)
                self.cache.values[layer][:, :, :n].copy_(v)

    def set_block(self, start: int) -> None:
        self.start.fill_(start)

    def set_quota(self, quota: int) -> None:
        self.quota.fill_(quota)

    # ------------------------------------------------------------------ the captured functions
    def _forward_block(self, logits: bool) -> Optional[torch.Tensor]:
        """The backbone over the active block (buffer positions start..start+B-1) of every row,
        writing its keys/values into the cache. -> (R, B, V) fp32 logits or None."""
        idx = self.start + self.block_offsets
        ids = torch.where(self.is_prompt[idx], self.row_ids[:, idx], self.seq[idx].unsqueeze(0))
        mask = AttentionMask.static_block(self.start, self.spec.block, self.key_positions, row_valid=self.row_valid)
        self.cache.write_at = idx
        out = self.model(ids, self.positions[:, idx], mask, past=self.cache, logits_for=None if logits else 0,
                         check_inputs=False)
        return out.logits if logits else None

    def _guided_logits(self) -> torch.Tensor:
        """One step's guided logits (B, V), image-only restriction applied."""
        logits = guide_logits(self._forward_block(True), self._guidance)
        if self.spec.image_only:
            logits[:, : self.spec.image_offset] = float("-inf")
        return logits

    def _commit(self, x0: torch.Tensor, prob: torch.Tensor) -> None:
        """Quota/threshold commit of proposals x0 (B,) with probabilities prob (B,), in place."""
        idx = self.start + self.block_offsets
        active = self.seq[idx]
        masked = active == self.spec.mask_id
        commit = quota_transfer_on_device(prob, masked, self.quota, self.spec.threshold)
        new = torch.where(commit, x0, active)
        self.seq.index_copy_(0, idx, new)
        self.commit.copy_(commit)
        self.prob.copy_(prob)
        self.status[0] = (new == self.spec.mask_id).sum()
        is_stop = (x0.unsqueeze(-1) == self.stops).any(-1)  # a broadcast compare: no data-dependent shapes
        self.status[1] = (is_stop & commit).any().long()

    def _greedy_step(self) -> None:
        x0, prob = sample_tokens(self._guided_logits(), 0.0)
        self._commit(x0, prob)

    def _commit_forward(self) -> None:
        self._forward_block(False)

    # ------------------------------------------------------------------ public steps
    def step(self, temperature: float, top_k: Optional[int], top_p: Optional[float],
             generator: Optional[torch.Generator]) -> None:
        """One denoising step of the active block: greedy runs wholly in one captured graph; with
        sampling the forward and guidance are captured and the draw runs eagerly."""
        if self.spec.greedy:
            self._run("step", self._greedy_step)
            return
        logits = self._run("logits", self._guided_logits)
        x0, prob = sample_tokens(logits, temperature, top_k, top_p, generator)
        self._commit(x0, prob)

    def commit_block(self) -> None:
        """Write the finished active block's keys/values (computed from its final tokens)."""
        self._run("commit", self._commit_forward)

    def post_status(self, slot: int) -> None:
        """Copy the status to host slot ``slot`` without waiting (read it with ``read_status``)."""
        self._host_status[slot].copy_(self.status, non_blocking=True)
        if self.device.type == "cuda":
            ev = torch.cuda.Event()
            ev.record()
            self._events[slot] = ev

    def read_status(self, slot: int) -> tuple[int, bool]:
        """(masks left in the block, whether the step committed a stop token) of a posted step."""
        ev = self._events[slot]
        if ev is not None:
            ev.synchronize()
        left, stop = self._host_status[slot].tolist()
        return int(left), bool(stop)

    # ------------------------------------------------------------------ capture
    def _run(self, name: str, fn: Callable[[], object]):
        """Run ``fn`` through its CUDA graph (captured on first use), or eagerly."""
        if not self.use_graphs:
            return fn()
        entry = self._graphs.get(name)
        if entry is None:
            entry = self._capture(name, fn)
            if entry is None:
                return fn()
        graph, out = entry
        graph.replay()
        return out

    def _capture(self, name: str, fn: Callable[[], object]):
        """Warm ``fn`` up on a side stream (restoring the sequence it commits into), then capture
        it. A failure turns graphs off for this stepper, with one warning naming the cause."""
        saved = self.seq.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(side):
                    for _ in range(2):
                        fn()
            finally:
                torch.cuda.current_stream().wait_stream(side)
                self.seq.copy_(saved)  # the warm-up's commits never happened
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # thread_local: a server thread that touches CUDA meanwhile does not void this capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = fn()
        except Exception as exc:  # capture is an optimisation: say why and run eagerly
            self.use_graphs = False
            msg = (f"CUDA graph capture of the static denoising step failed ({type(exc).__name__}: {exc}); "
                   f"running it eagerly. A backend that synchronises with the host (moe='loop') cannot be captured.")
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            return None
        self._graphs[name] = (graph, out)
        return self._graphs[name]
