"""Thinking mode's protocol (MODEL_SPEC §5.2): the model first writes its reasoning and the image
header ``<|image|> <h> <w> <boi>`` itself; the image is then generated for the grid it wrote.

Phase 1 runs the thinking prompt as text until ``<boi>`` with the ``thinking_*`` settings. A
malformed header is replaced by the requested grid. Phase 2's conditional prompt is the phase-1
prompt, the reasoning and the header; its null prompt is the thinking null prompt for that grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..generation.results import GenerationError, GenerationStats
from ..options import ImageOptions, sampler_config
from .common import Progress, check_length, parse_header, run

__all__ = ["Thought", "think"]


@dataclass
class Thought:
    text: str  # the reasoning, special tokens removed
    grid: tuple[int, int]  # the grid the model wrote (or the requested one when its header was malformed)
    cond: list[int]  # phase 2's conditional prompt
    null: list[int]  # phase 2's null prompt


def think(pipe: Any, prompt: str, requested: tuple[int, int], o: ImageOptions, gen: Optional[torch.Generator],
          progress: Optional[Progress], stats: GenerationStats) -> Thought:
    phase1 = pipe.prompts.thinking_phase1(prompt)
    check_length(pipe, len(phase1), o.thinking_gen_length, "thinking phase")
    boi = pipe.tokenizer.special.boi
    cfg = sampler_config(o, gen_length=o.thinking_gen_length, stop_ids=(boi,), steps=o.thinking_steps,
                         temperature=o.thinking_temperature, top_p=o.thinking_top_p, top_k=o.thinking_top_k,
                         record_trace=False)
    out = run(pipe, phase1, cfg, gen, progress, stats).tokens.tolist()
    if out[-1] != boi:
        raise GenerationError(
            f"thinking phase ended without an image header (<boi>) after {len(out) - len(phase1)} tokens; "
            f"try a larger thinking_gen_length or a different seed"
        )
    body = out[len(phase1):]
    (h, w), head_start = parse_header(pipe, body, requested)
    text = pipe.tokenizer.decode(body[:head_start], skip_special_tokens=True)
    cond = phase1 + body[:head_start] + pipe.prompts.header(h, w)
    return Thought(text, (h, w), cond, pipe.prompts.thinking_null(h, w))
