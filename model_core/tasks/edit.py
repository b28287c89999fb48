"""Editing: one or several reference images and an instruction, with the 3-way editing CFG."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..generation.results import GenerationStats, ImageResult
from ..generation.sampler import CFGSpec
from ..options import EditOptions, sampler_config
from .common import Progress, as_codes, check_length, generator_for, image_result, run

__all__ = ["edit_image"]


def edit_image(pipe: Any, image: Any, instruction: str, o: EditOptions, generator: Optional[torch.Generator] = None,
               progress: Optional[Progress] = None) -> ImageResult:
    """The output grid is the first image's; raw images are cropped with the editing preprocessing."""
    sources = [as_codes(pipe, im, "edit") for im in (image if isinstance(image, (list, tuple)) else [image])]
    h, w = sources[0].h, sources[0].w
    full, no_text, no_image = pipe.prompts.editing(sources, instruction, h, w)
    n = h * w
    check_length(pipe, len(full), n, "editing")
    guide = CFGSpec("editing", null_ids=no_text, null_image_ids=no_image, text_scale=o.cfg_text_scale,
                    image_scale=o.cfg_image_scale, rescale=o.cfg_rescale)
    stats = GenerationStats()
    r = run(pipe, full, sampler_config(o, gen_length=n, image_only=True, cfg=guide), generator_for(pipe, o.seed, generator),
            progress, stats)
    return image_result(pipe, r, h, w, o.decode, o.decoder_steps, o.seed, prompt_ids=full, stats=stats)
