"""Interleaved text and images in SGLang-Omni's protocol: text until the model writes
``<|image|> h w <boi>``, then h*w codes and ``<|/image|>``, repeated up to ``max_frames``.

The first frame is guided by a null prompt (simple CFG); later frames by editing CFG (no text:
every image so far with <uncondition> instead of the instruction; no image: the instruction
alone). A malformed header falls back to ``image_h`` x ``image_w``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from ..generation.prompts import SYSTEM_PROMPTS, UNCONDITION, ChatMessage, ImageCodes
from ..generation.results import GenerationStats, ImageResult, InterleavedResult
from ..generation.sampler import CFGSpec
from ..options import InterleavedOptions, sampler_config
from .common import Progress, as_codes, generator_for, image_result, output_grid, parse_header, run

__all__ = ["generate_interleaved"]


@dataclass
class _Story:
    """The growing context and what has been written so far."""

    context: list[int]
    sources: list[ImageCodes]
    null_base: list[int]
    no_image_base: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)
    segments: list[Union[str, ImageResult]] = field(default_factory=list)
    frames: list[ImageCodes] = field(default_factory=list)

    def say(self, text: str) -> None:
        if text:
            self.segments.append(text)


def generate_interleaved(pipe: Any, prompt: str, images: Sequence[Any], o: InterleavedOptions,
                         generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None) -> InterleavedResult:
    default_grid = output_grid(pipe, o.image_h, o.image_w, 512)
    gen = generator_for(pipe, o.seed, generator)
    system = SYSTEM_PROMPTS["interleaved"]
    sources = [as_codes(pipe, im, "understand") for im in images]
    story = _Story(pipe.prompts.chat([ChatMessage("user", prompt, sources)], system=system), sources,
                   pipe.prompts.chat([ChatMessage("user", UNCONDITION)], system=system),
                   pipe.prompts.chat([ChatMessage("user", prompt)], system=system))
    limit = pipe.backbone.config.max_position_embeddings
    while True:
        grid = _write_text(pipe, story, o, default_grid, gen, progress)
        if grid is None:
            break
        if len(story.context) + grid[0] * grid[1] + 1 > limit:
            break
        _draw_frame(pipe, story, prompt, grid, o, gen, progress)
    return InterleavedResult(story.segments, story.stats)


def _write_text(pipe: Any, story: _Story, o: InterleavedOptions, default_grid: tuple[int, int],
                gen: Optional[torch.Generator], progress: Optional[Progress]) -> Optional[tuple[int, int]]:
    """Write text until an image header: its grid (the header is now in the context), or None
    when the story ends (no header, no room, or no frames left)."""
    budget = min(o.text_gen_length, pipe.backbone.config.max_position_embeddings - len(story.context))
    if budget <= 0:
        return None
    boi = pipe.tokenizer.special.boi
    cfg = sampler_config(o, gen_length=budget, stop_ids=(boi,) if len(story.frames) < o.max_frames else (),
                         record_trace=False)
    body = run(pipe, story.context, cfg, gen, progress, story.stats).generated.tolist()
    if not body or body[-1] != boi:
        story.say(pipe.tokenizer.decode(body, skip_special_tokens=True))
        return None
    (h, w), head_start = parse_header(pipe, body, default_grid)
    story.say(pipe.tokenizer.decode(body[:head_start], skip_special_tokens=True))
    story.context = story.context + body[:head_start] + pipe.prompts.header(h, w)
    return h, w


def _draw_frame(pipe: Any, story: _Story, prompt: str, grid: tuple[int, int], o: InterleavedOptions,
                gen: Optional[torch.Generator], progress: Optional[Progress]) -> None:
    h, w = grid
    head = pipe.prompts.header(h, w)
    if not story.frames:
        guide = CFGSpec("simple", null_ids=story.null_base + head, scale=o.cfg_scale, rescale=o.cfg_rescale)
    else:
        no_text = pipe.prompts.chat([ChatMessage("user", UNCONDITION, story.sources + story.frames)],
                                    system=SYSTEM_PROMPTS["interleaved"]) + head
        guide = CFGSpec("editing", null_ids=no_text, null_image_ids=story.no_image_base + head,
                        text_scale=o.cfg_text_scale, image_scale=o.cfg_image_scale, rescale=o.cfg_rescale)
    cfg = sampler_config(o, gen_length=h * w, image_only=True, cfg=guide, steps=o.image_steps)
    r = run(pipe, story.context, cfg, gen, progress, story.stats)
    frame = image_result(pipe, r, h, w, o.decode, o.decoder_steps, o.seed, prompt_ids=list(story.context))
    story.segments.append(frame)
    story.frames.append(frame.as_codes)
    story.context = story.context + r.generated[: h * w].tolist() + [pipe.tokenizer.special.image_end]
