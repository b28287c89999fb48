"""Text to image, plain or thinking: check inputs -> prompts -> config -> sample -> decode."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..generation.results import GenerationStats, ImageResult
from ..generation.sampler import CFGSpec
from ..options import ImageOptions, sampler_config
from .common import Progress, check_length, generator_for, image_result, output_grid, run
from .thinking import think

__all__ = ["generate_image"]


def generate_image(pipe: Any, prompt: str, o: ImageOptions, generator: Optional[torch.Generator] = None,
                   progress: Optional[Progress] = None) -> ImageResult:
    """``image_h`` / ``image_w`` are output pixels (32 per code); None is the checkpoint's size,
    else 1024. In thinking mode the grid is the one the model wrote (reported in the result)."""
    h, w = output_grid(pipe, o.image_h, o.image_w, 1024)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    gen = generator_for(pipe, o.seed, generator)
    stats = GenerationStats()
    thinking = None
    if o.mode == "thinking":
        thought = think(pipe, prompt, (h, w), o, gen, progress, stats)
        (h, w), cond, null, thinking = thought.grid, thought.cond, thought.null, thought.text
    else:
        cond, null = pipe.prompts.text_to_image(prompt, h, w)
    n = h * w
    gen_length = n if o.gen_length is None else o.gen_length
    if gen_length < n:
        raise ValueError(f"gen_length={gen_length} is smaller than the {h}x{w} grid ({n} codes)")
    check_length(pipe, len(cond), gen_length, "image generation")
    guide = CFGSpec("simple", null_ids=null, scale=o.cfg_scale, rescale=o.cfg_rescale)
    r = run(pipe, cond, sampler_config(o, gen_length=gen_length, image_only=True, cfg=guide), gen, progress, stats)
    return image_result(pipe, r, h, w, o.decode, o.decoder_steps, o.seed, thinking=thinking, prompt_ids=cond, stats=stats)
