"""Block-diffusion sampler (MODEL_SPEC §5): the loop that turns masks into tokens, block by block.

The sequence is ``prompt + gen_length`` masks, cut into blocks of ``block_length`` counted from
position 0. Each block is denoised for at most ``steps`` steps; a step runs the backbone, turns
the active block's logits into proposals and commits some of them for good. Later blocks never
change earlier ones (block-causal attention), which is what makes the KV cache exact.

Three named policies decide how a step is computed and committed:

- guidance (``CFGSpec``): none, simple (cond vs a null prompt) or editing (full / no text /
  no image), with the 0.7 logit rescale; null prompts are left-padded to the prompt length with
  their positions restarting at 0 and the padding hidden from every query.
- cache: ``none`` recomputes the whole window every step (the official baseline); ``exact``
  computes each committed block's keys/values once and runs steps on the 32 active tokens only
  (same tokens as ``none``); ``static`` is ``exact`` over a preallocated cache with fixed-shape
  steps, captured once as CUDA graphs on CUDA (same tokens as ``exact``, ``static_loop.py``);
  ``sprint`` is ``exact`` plus SPRINT prefix pruning after ``cache_warmup_steps`` steps and the
  adaptive unmasking rule.
- unmasking: ``quota`` (baseline) or ``adaptive`` (SPRINT), see ``sampling.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from ..backbone import KVCache, LLaDA2Backbone
from ..layers.attention import AttentionMask
from .sampling import REMASKING, adaptive_transfer, guide_logits, quota_transfer, sample_tokens, transfer_schedule
from .sprint import SprintConfig, prune_prefix
from .static_loop import StaticStepper, StepSpec, capacity_for, weights_key

__all__ = ["CFGSpec", "SamplerConfig", "SamplerResult", "StepRecord", "BlockDiffusionSampler"]

# Static-loop workspaces kept per sampler (a server alternating chat, text-to-image and editing
# keeps each one's graphs; each holds its KV buffers, tens to hundreds of MB at full size).
STATIC_WORKSPACES = 4

CacheMode = Literal["auto", "none", "exact", "static", "sprint"]


@dataclass(frozen=True)
class CFGSpec:
    """Classifier-free guidance. kind "simple": ``u + scale (c - u)`` with ``null_ids``;
    kind "editing": ``nt + text_scale (full - nt) + image_scale (nt - ni)`` with
    ``null_ids`` = no-text prompt and ``null_image_ids`` = no-image prompt."""

    kind: Literal["simple", "editing"]
    null_ids: Sequence[int]
    scale: float = 1.0
    null_image_ids: Optional[Sequence[int]] = None
    text_scale: float = 0.0
    image_scale: float = 0.0
    rescale: float = 0.7

    def __post_init__(self) -> None:
        if self.kind not in ("simple", "editing"):
            raise ValueError(f"CFG kind={self.kind!r}: 'simple' or 'editing'")
        if self.kind == "editing" and self.null_image_ids is None:
            raise ValueError("editing CFG needs null_image_ids (the no-image prompt)")
        if not len(self.null_ids):
            raise ValueError("CFG null prompt is empty")

    @property
    def active(self) -> bool:
        """Whether guidance changes anything (the official switches)."""
        if self.kind == "editing":
            return self.text_scale > 0 or self.image_scale > 0
        return self.scale != 1.0

    @property
    def null_prompts(self) -> list[Sequence[int]]:
        return [self.null_ids] if self.kind == "simple" else [self.null_ids, self.null_image_ids]  # type: ignore[list-item]


@dataclass
class SamplerConfig:
    """One generation's settings. Defaults follow the official ``generate_bd``."""

    gen_length: int = 2048
    block_length: int = 32
    steps: int = 32
    temperature: float = 0.0
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    threshold: float = 0.95
    minimal_topk: int = 1
    eos_early_stop: bool = True
    stop_ids: tuple = ()  # extra ids that end text generation like eos (e.g. <boi> for interleaving)
    image_only: bool = False  # restrict proposals to image ids (>= image_token_offset)
    cfg: Optional[CFGSpec] = None
    cache: CacheMode = "exact"
    sprint: SprintConfig = field(default_factory=SprintConfig)
    record_trace: bool = False

    def __post_init__(self) -> None:
        for name in ("gen_length", "block_length", "steps", "minimal_topk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}={v!r}: must be a positive int")
        if self.minimal_topk > self.gen_length:
            # steps = gen_length // minimal_topk would be 0: nothing is ever committed (the official
            # code then returns all masks)
            raise ValueError(f"minimal_topk={self.minimal_topk} is more than gen_length={self.gen_length}: no step could commit")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.cache not in ("auto", "none", "exact", "static", "sprint"):
            raise ValueError(f"cache={self.cache!r}: 'auto', 'none', 'exact', 'static' or 'sprint'")
        if self.sprint.remasking not in REMASKING:
            raise ValueError(f"remasking={self.sprint.remasking!r}: choose one of {REMASKING}")


@dataclass
class StepRecord:
    block: int
    step: int
    committed: list[int]  # absolute positions committed at this step
    confidences: list[float]  # the committed positions' proposal probabilities


@dataclass
class SamplerResult:
    tokens: torch.Tensor  # (P + n,) the prompt and what was generated (text: through the first eos)
    prompt_length: int
    forwards: int  # backbone calls
    forward_tokens: int  # query positions run through the backbone, all branches
    seconds: float
    trace: list[StepRecord] = field(default_factory=list)

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[self.prompt_length :]


class _Branches:
    """The rows run per step: the conditional prompt, then each null prompt left-padded to the
    prompt length (positions restart at 0 after the padding, padding invisible as keys)."""

    def __init__(self, prompt: torch.Tensor, cfg: Optional[CFGSpec], total: int, mask_id: int) -> None:
        P = prompt.shape[0]
        device = prompt.device
        prompts = [prompt]
        positions = [torch.arange(total, device=device)]
        valid = [torch.ones(total, dtype=torch.bool, device=device)]
        pads = [0]
        if cfg is not None and cfg.active:
            for null in cfg.null_prompts:
                null_t = torch.as_tensor(list(null), dtype=torch.long, device=device)[-P:]
                pad = P - null_t.shape[0]
                prompts.append(torch.cat((torch.full((pad,), mask_id, dtype=torch.long, device=device), null_t)))
                positions.append(torch.cat((torch.zeros(pad, dtype=torch.long, device=device), torch.arange(total - pad, device=device))))
                v = torch.ones(total, dtype=torch.bool, device=device)
                v[:pad] = False
                valid.append(v)
                pads.append(pad)
        self.prompts = torch.stack(prompts)  # (R, P)
        self.positions = torch.stack(positions)  # (R, total)
        self.valid = torch.stack(valid)  # (R, total)
        self.pads = pads
        self.rows = len(prompts)
        self.any_padding = any(pads)

    def window(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Token ids (R, end-start) of positions start..end-1 for every row."""
        P = self.prompts.shape[1]
        out = x[start:end].unsqueeze(0).repeat(self.rows, 1)
        if start < P:
            out[:, : min(P, end) - start] = self.prompts[:, start : min(P, end)]
        return out


@dataclass
class _Run:
    """The state of one ``generate`` call, shared by the steps of its loop."""

    cfg: SamplerConfig
    x: torch.Tensor  # (total,) the sequence being denoised: prompt, then masks / committed tokens
    br: _Branches
    P: int  # prompt length
    B: int  # block length
    nb: int  # blocks in the sequence
    steps: int  # steps per block at most
    schedule: list[int]  # quota commits per step
    stops: torch.Tensor  # eos and the extra stop ids
    adaptive: bool  # the SPRINT unmasking rule (cache "sprint")
    need_conf: bool  # keep the prefix's max probabilities for pruning
    first_block: int  # the block of the first generated position (the first one denoised)
    generator: Optional[torch.Generator]
    cache: Optional[KVCache] = None
    conf_prefix: Optional[torch.Tensor] = None  # (R, prefix) max-prob of committed positions (SPRINT)
    trace: list[StepRecord] = field(default_factory=list)


class BlockDiffusionSampler:
    """Runs ``SamplerConfig`` on a backbone. ``generate(prompt_ids)`` -> ``SamplerResult``."""

    def __init__(self, model: LLaDA2Backbone, *, mask_id: int, eos_id: int, image_token_offset: Optional[int] = None) -> None:
        self.model = model
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.image_token_offset = image_token_offset if image_token_offset is not None else model.config.image_token_offset
        # static-loop workspaces (cache buffers and captured graphs), most recently used last
        self._static_ws: "OrderedDict[StepSpec, StaticStepper]" = OrderedDict()

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[int] | torch.Tensor,
        config: SamplerConfig,
        *,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> SamplerResult:
        """Denoise ``config.gen_length`` tokens after ``prompt_ids``.

        progress(blocks_done, blocks_total) is called after each block.
        """
        t0 = time.perf_counter()
        if config.cache == "auto":  # same tokens either way; the static loop pays off on CUDA
            on_cuda = next(self.model.parameters()).device.type == "cuda"
            config = dataclasses.replace(config, cache="static" if on_cuda else "exact")
        run = self._start(prompt_ids, config, generator)
        if config.cache == "static":
            return self._generate_static(run, progress, t0)
        stop_at: Optional[int] = None
        for b in range(run.first_block, run.nb):
            stop_at = self._denoise_block(run, b)
            if progress is not None:
                progress(b - run.first_block + 1, run.nb - run.first_block)
            if stop_at is not None:
                break
            if self._block_done(run, b):
                break
        return self._result(run, stop_at, t0)

    # ------------------------------------------------------------------ loop
    def _start(
        self, prompt_ids: Sequence[int] | torch.Tensor, cfg: SamplerConfig, generator: Optional[torch.Generator]
    ) -> _Run:
        """Check the prompt against the model, lay out the masked sequence and prefill the prompt's
        whole blocks into the cache (resets the forward counters)."""
        device = next(self.model.parameters()).device
        prompt = torch.as_tensor(list(prompt_ids) if not torch.is_tensor(prompt_ids) else prompt_ids, dtype=torch.long).to(device)
        if prompt.dim() != 1 or prompt.numel() == 0:
            raise ValueError("prompt_ids must be a non-empty 1-D sequence of token ids")
        B = cfg.block_length
        P = prompt.shape[0]
        steps = min(cfg.steps, cfg.gen_length // cfg.minimal_topk)
        nb = (P + cfg.gen_length + B - 1) // B
        total = nb * B
        max_pos = self.model.config.max_position_embeddings
        if total > max_pos:
            raise ValueError(
                f"prompt ({P}) + gen_length ({cfg.gen_length}) needs {total} positions (whole blocks of {B}); "
                f"the model has {max_pos}"
            )
        vocab = self.model.config.vocab_size
        if int(prompt.min()) < 0 or int(prompt.max()) >= vocab:
            raise ValueError(f"prompt ids out of range [0, {vocab})")
        schedule = transfer_schedule(B, steps)
        x = torch.full((total,), self.mask_id, dtype=torch.long, device=device)
        x[:P] = prompt
        adaptive = cfg.cache == "sprint"
        sp = cfg.sprint
        if generator is not None and generator.device.type != device.type:
            # torch draws on the tensors' device; a CPU generator seeds one there (reproducible
            # per seed and device, as any torch sampling is)
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            generator = torch.Generator(device=device).manual_seed(seed)
        run = _Run(
            cfg=cfg, x=x, br=_Branches(prompt, cfg.cfg, total, self.mask_id), P=P, B=B, nb=nb, steps=steps,
            schedule=schedule, stops=torch.tensor([self.eos_id, *cfg.stop_ids], dtype=torch.long, device=device),
            adaptive=adaptive,
            # prefix confidences are only read when pruning blends them in
            need_conf=adaptive and sp.keep_ratio < 1.0 and sp.confidence_alpha < 1.0,
            first_block=P // B, generator=generator,
        )
        self._forwards = 0
        self._forward_tokens = 0
        if cfg.cache != "none" and run.first_block > 0:
            run.cache, run.conf_prefix = self._extend_cache(
                None, None, run.br, x, 0, run.first_block * B, B, need_conf=run.need_conf
            )
        return run

    def _denoise_block(self, run: _Run, b: int) -> Optional[int]:
        """Up to ``run.steps`` steps on block b, fewer once the block has no mask left. Returns the
        position of the stop token that ends the text early, if one does (no step follows it)."""
        cfg, x = run.cfg, run.x
        end = (b + 1) * run.B
        prefix_len = end - run.B
        pruned: Optional[list[tuple[list[torch.Tensor], list[torch.Tensor]]]] = None
        for step in range(run.steps):
            active = x[prefix_len:end]
            masked = active == self.mask_id
            if not bool(masked.any()):
                break
            use_pruned = run.adaptive and step >= cfg.sprint.cache_warmup_steps and prefix_len > 0
            if use_pruned and pruned is None:
                pruned = self._prune(run.cache, run.conf_prefix, run.br, x, prefix_len, cfg.sprint)
            logits = self._step_logits(run, pruned if use_pruned else None, prefix_len, end)
            x0, commit, prob = self._propose(run, logits, masked, active, step)
            x[prefix_len:end] = torch.where(commit, x0, active)
            if cfg.record_trace:
                idx = torch.nonzero(commit, as_tuple=True)[0]
                run.trace.append(StepRecord(b, step, (idx + prefix_len).tolist(), prob[idx].tolist()))
            stop_at = self._early_stop(run, x0, commit, end)
            if stop_at is not None:
                return stop_at
        return None

    def _step_logits(self, run: _Run, pruned, prefix_len: int, end: int) -> torch.Tensor:
        """One step's guided logits (B, V) for the active block: the whole window (cache "none"),
        the pruned prefixes (``pruned`` given) or the exact cache."""
        cfg = run.cfg
        if cfg.cache == "none":
            row_logits = self._window_logits(run.br, run.x, end, run.B)
        elif pruned is not None:
            row_logits = self._pruned_logits(run.br, run.x, pruned, prefix_len, end)
        else:
            row_logits = self._cached_logits(run.br, run.x, run.cache, prefix_len, end)
        logits = self._guide(row_logits, cfg)
        if cfg.image_only:
            logits[:, : self.image_token_offset] = float("-inf")
        return logits

    def _propose(self, run: _Run, logits: torch.Tensor, masked: torch.Tensor, active: torch.Tensor, step: int):
        """-> (x0, commit, prob): the proposals, which of them to commit, and their probabilities
        (None for the adaptive rule without a trace)."""
        cfg = run.cfg
        if run.adaptive:
            x0, commit = adaptive_transfer(
                logits, masked, active, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                remasking=cfg.sprint.remasking, steps_left=run.steps - step, minimal_topk=cfg.minimal_topk,
                threshold=cfg.threshold, generator=run.generator,
            )
            prob = F.softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1) if cfg.record_trace else None
        else:
            x0, prob = sample_tokens(logits, cfg.temperature, cfg.top_k, cfg.top_p, run.generator)
            commit = quota_transfer(prob, masked, run.schedule[step], cfg.threshold)
        return x0, commit, prob

    def _early_stop(self, run: _Run, x0: torch.Tensor, commit: torch.Tensor, end: int) -> Optional[int]:
        """Text early stop: the first stop token, once this step has committed one and no mask precedes it."""
        cfg = run.cfg
        if not cfg.image_only and cfg.eos_early_stop and bool(torch.isin(x0[commit], run.stops).any()):
            eos = self._first_stop(run.x, run.P, end, run.stops)
            if eos is not None and not bool((run.x[run.P:eos] == self.mask_id).any()):
                return eos
        return None

    def _block_done(self, run: _Run, b: int) -> bool:
        """After block b (no early stop): True when a stop token ends generation here; otherwise
        commit the block to the cache."""
        cfg = run.cfg
        end = (b + 1) * run.B
        if not cfg.image_only and self._first_stop(run.x, run.P, end, run.stops) is not None:
            return True
        if cfg.cache != "none" and b + 1 < run.nb:
            run.cache, run.conf_prefix = self._extend_cache(
                run.cache, run.conf_prefix, run.br, run.x, end - run.B, end, run.B, need_conf=run.need_conf
            )
        return False

    # ------------------------------------------------------------------ static loop
    @property
    def static_workspace(self) -> Optional[StaticStepper]:
        """The static loop's workspace of the last ``cache="static"`` run (its cache buffers and
        captured graphs), kept for the next run of the same shape; None before any."""
        return next(reversed(self._static_ws.values()), None)

    def release_static(self) -> None:
        """Free the static loop's buffers and graphs (the next static run builds them again)."""
        self._static_ws.clear()

    def _stepper(self, run: _Run) -> StaticStepper:
        """The workspace for this run's shape and settings (kept, with its graphs, for the next
        runs of the same kind; the ``STATIC_WORKSPACES`` most recently used are kept)."""
        cfg, g = run.cfg, run.cfg.cfg
        guidance = (g.kind, g.scale, g.text_scale, g.image_scale, g.rescale) if g is not None and g.active else ()
        spec = StepSpec(
            rows=run.br.rows, capacity=capacity_for(run.x.shape[0]), block=run.B, guidance=guidance,
            image_only=cfg.image_only, image_offset=self.image_token_offset, threshold=cfg.threshold,
            greedy=cfg.temperature == 0.0, mask_id=self.mask_id, stops=(self.eos_id, *cfg.stop_ids),
        )
        weights = weights_key(self.model)
        st = self._static_ws.pop(spec, None)
        if st is None or st.weights != weights:
            if any(w.weights != weights for w in self._static_ws.values()):
                self._static_ws.clear()  # new weights: every captured graph reads the old ones
            while len(self._static_ws) >= STATIC_WORKSPACES:
                self._static_ws.popitem(last=False)
            emb = self.model.model.word_embeddings.weight
            st = StaticStepper(self.model, spec, emb.device, emb.dtype)
        self._static_ws[spec] = st  # (re)inserted last: the most recently used
        return st

    def _generate_static(self, run: _Run, progress: Optional[Callable[[int, int], None]], t0: float) -> SamplerResult:
        st = self._stepper(run)
        st.load(run.x, run.br.prompts, run.br.positions, run.br.valid, run.cache)
        run.cache = None
        stop_at: Optional[int] = None
        for b in range(run.first_block, run.nb):
            stop_at = self._static_block(run, st, b)
            if progress is not None:
                progress(b - run.first_block + 1, run.nb - run.first_block)
            if stop_at is not None or self._static_block_done(run, st, b):
                break
        run.x.copy_(st.seq[: run.x.shape[0]])
        return self._result(run, stop_at, t0)

    def _static_block(self, run: _Run, st: StaticStepper, b: int) -> Optional[int]:
        """Block b's steps. Greedy runs without a trace read each step's status one step late
        (the host waits only while the next step runs; a block that finished early costs one
        no-op step); sampled or traced runs read it after each step, as the exact loop does."""
        cfg = run.cfg
        end = (b + 1) * run.B
        st.set_block(end - run.B)
        lagged = st.spec.greedy and not cfg.record_trace
        pending: Optional[int] = None
        for step in range(run.steps):
            st.set_quota(run.schedule[step])
            st.step(cfg.temperature, cfg.top_k, cfg.top_p, run.generator)
            self._forwards += 1
            self._forward_tokens += run.br.rows * run.B
            if cfg.record_trace:
                idx = torch.nonzero(st.commit, as_tuple=True)[0]
                run.trace.append(StepRecord(b, step, (idx + end - run.B).tolist(), st.prob[idx].tolist()))
            st.post_status(step % 2)
            read = pending if lagged else step
            pending = step
            if read is None:
                continue
            left, stop = st.read_status(read % 2)
            stop_at = self._static_stop(run, st, stop, end)
            if stop_at is not None or left == 0:
                return stop_at
        if lagged and pending is not None:
            return self._static_stop(run, st, st.read_status(pending % 2)[1], end)
        return None

    def _static_stop(self, run: _Run, st: StaticStepper, committed_stop: bool, end: int) -> Optional[int]:
        """The exact loop's early stop on the device sequence: after a step that committed a stop
        token, the first stop token once no mask precedes it."""
        if run.cfg.image_only or not run.cfg.eos_early_stop or not committed_stop:
            return None
        eos = self._first_stop(st.seq, run.P, end, run.stops)
        if eos is not None and not bool((st.seq[run.P : eos] == self.mask_id).any()):
            return eos
        return None

    def _static_block_done(self, run: _Run, st: StaticStepper, b: int) -> bool:
        """``_block_done`` for the static loop: stop at a stop token, else commit the block."""
        end = (b + 1) * run.B
        if not run.cfg.image_only and self._first_stop(st.seq, run.P, end, run.stops) is not None:
            return True
        if b + 1 < run.nb:
            st.commit_block()
            self._forwards += 1
            self._forward_tokens += run.br.rows * run.B
        return False

    def _result(self, run: _Run, stop_at: Optional[int], t0: float) -> SamplerResult:
        """Cut the sequence to the prompt and gen_length, and text through its first stop token."""
        cfg, P = run.cfg, run.P
        out = run.x[: P + cfg.gen_length]
        if not cfg.image_only:
            eos = self._first_stop(out, P, out.shape[0], run.stops) if stop_at is None else stop_at
            if eos is not None:
                out = out[: eos + 1]
        return SamplerResult(
            tokens=out.clone(), prompt_length=P, forwards=self._forwards, forward_tokens=self._forward_tokens,
            seconds=time.perf_counter() - t0, trace=run.trace,
        )

    # ------------------------------------------------------------------ steps
    def _first_stop(self, x: torch.Tensor, start: int, end: int, stops: torch.Tensor) -> Optional[int]:
        """First position in start..end-1 holding eos or a stop id (searched after the prompt only:
        the official code searches from position 0 and cuts a prompt that contains eos)."""
        hits = torch.nonzero(torch.isin(x[start:end], stops), as_tuple=True)[0]
        return start + int(hits[0]) if hits.numel() else None

    def _forward(self, ids, positions, mask, past=None, logits_for=None, return_kv=False):
        self._forwards += 1
        self._forward_tokens += ids.numel()
        return self.model(ids, positions, mask, past=past, logits_for=logits_for, return_kv=return_kv, check_inputs=False)

    def _window_logits(self, br: _Branches, x: torch.Tensor, end: int, B: int) -> torch.Tensor:
        """Official baseline: the whole window 0..end for every row. -> (R, B, V)."""
        ids = br.window(x, 0, end)
        valid = br.valid[:, :end] if br.any_padding else None
        mask = AttentionMask.block_causal(end, B, key_valid=valid, device=x.device)
        return self._forward(ids, br.positions[:, :end], mask, logits_for=B).logits

    def _cached_logits(self, br: _Branches, x: torch.Tensor, cache: Optional[KVCache], prefix_len: int, end: int) -> torch.Tensor:
        ids = br.window(x, prefix_len, end)
        valid = br.valid[:, :end] if br.any_padding else None
        mask = AttentionMask.prefix_and_block(prefix_len, end - prefix_len, key_valid=valid, device=x.device)
        return self._forward(ids, br.positions[:, prefix_len:end], mask, past=cache).logits

    def _extend_cache(self, cache, conf, br: _Branches, x: torch.Tensor, start: int, end: int, B: int, need_conf: bool):
        """Add the keys/values of the finished positions start..end-1 (whole blocks) to the cache.

        The first call prefills the prompt's whole blocks block-causally; later calls commit one
        finished block over the cache. Also returns, for SPRINT, each position's max probability.
        """
        ids = br.window(x, start, end)
        valid = br.valid[:, :end] if br.any_padding else None
        if cache is None:
            mask = AttentionMask.block_causal(end, B, key_valid=valid, device=x.device)
        else:
            mask = AttentionMask.prefix_and_block(start, end - start, key_valid=valid, device=x.device)
        out = self._forward(ids, br.positions[:, start:end], mask, past=cache, logits_for=0, return_kv=True)
        if cache is None:
            cache = out.kv
        else:
            cache = KVCache(
                [torch.cat((k, nk), dim=2) for k, nk in zip(cache.keys, out.kv.keys)],
                [torch.cat((v, nv), dim=2) for v, nv in zip(cache.values, out.kv.values)],
            )
        if need_conf:
            c = self._max_prob(out.hidden_states)
            conf = c if conf is None else torch.cat((conf, c), dim=1)
        return cache, conf

    def _max_prob(self, hidden: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Max softmax probability per position (R, L), lm_head in chunks to bound memory."""
        outs = []
        for i in range(0, hidden.shape[1], chunk):
            logits = self.model.lm_head(hidden[:, i : i + chunk]).float()
            outs.append(torch.exp(logits.max(dim=-1).values - torch.logsumexp(logits, dim=-1)))
        return torch.cat(outs, dim=1) if outs else hidden.new_zeros(hidden.shape[:2], dtype=torch.float32)

    def _prune(self, cache, conf, br: _Branches, x: torch.Tensor, prefix_len: int, sp: SprintConfig):
        """Per row: prune its prefix cache (SPRINT); rows are pruned independently."""
        pruned = []
        for r in range(br.rows):
            ids = br.window(x, 0, prefix_len)[r]
            valid = None if sp.legacy_padding or not br.pads[r] else br.valid[r, :prefix_len]
            ks = [k[r : r + 1, :, :prefix_len] for k in cache.keys]
            vs = [v[r : r + 1, :, :prefix_len] for v in cache.values]
            pruned.append(prune_prefix(ks, vs, ids, conf[r] if conf is not None else None, valid, sp, self.image_token_offset))
        return pruned

    def _pruned_logits(self, br: _Branches, x: torch.Tensor, pruned, prefix_len: int, end: int) -> torch.Tensor:
        """All rows in one forward over their pruned prefixes: rows keep different counts, so
        shorter ones are right-padded with keys hidden by ``key_valid``."""
        ids = br.window(x, prefix_len, end)
        B = end - prefix_len
        lengths = [ks[0].shape[2] for ks, _ in pruned]  # every layer of a row keeps the same count
        n = max(lengths)
        keys, values = [], []
        for layer in range(len(pruned[0][0])):
            ks = [F.pad(row_k[layer], (0, 0, 0, n - row_k[layer].shape[2])) for row_k, _ in pruned]
            vs = [F.pad(row_v[layer], (0, 0, 0, n - row_v[layer].shape[2])) for _, row_v in pruned]
            keys.append(torch.cat(ks, dim=0))
            values.append(torch.cat(vs, dim=0))
        valid = None
        if len(set(lengths)) > 1:
            valid = torch.ones(len(pruned), n + B, dtype=torch.bool, device=x.device)
            for r, length in enumerate(lengths):
                valid[r, length:n] = False
        mask = AttentionMask.prefix_and_block(n, B, key_valid=valid, device=x.device)
        return self._forward(ids, br.positions[:, prefix_len:end], mask, past=KVCache(keys, values)).logits

    def _guide(self, row_logits: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
        """(R, L, V) -> (L, V): CFG combination and rescale (before any vocabulary restriction)."""
        return guide_logits(row_logits, cfg.cfg)
