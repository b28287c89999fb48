"""What the task pipelines share: seeds, length and size checks, running the sampler, turning
generated ids into an ``ImageResult`` and reading an image header the model wrote."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..generation.prompts import ImageCodes
from ..generation.results import GenerationStats, ImageResult
from ..generation.sampler import SamplerConfig, SamplerResult

__all__ = ["Progress", "as_codes", "check_length", "generator_for", "image_result", "is_encoded", "output_grid",
           "parse_header", "run"]

Progress = Callable[[int, int], None]


def generator_for(pipe: Any, seed: Optional[int], generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    """The caller's generator, else a fresh one seeded with ``seed`` (never the global RNG)."""
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=pipe.device).manual_seed(int(seed))


def check_length(pipe: Any, prompt_len: int, gen_length: int, what: str) -> None:
    limit = pipe.backbone.config.max_position_embeddings
    if prompt_len + gen_length > limit:
        raise ValueError(
            f"{what}: prompt ({prompt_len} tokens) + gen_length ({gen_length}) = {prompt_len + gen_length} "
            f"exceeds the model's {limit} positions"
        )


def output_grid(pipe: Any, image_h: Optional[int], image_w: Optional[int], fallback: int) -> tuple[int, int]:
    """Output pixels (None: the checkpoint's ``image_size``, else ``fallback``) -> the code grid
    (32 px per code), validated against the size tokens."""
    dh, dw = pipe.defaults.get("image_size", (fallback, fallback))
    image_h, image_w = (dh if image_h is None else image_h), (dw if image_w is None else image_w)
    for name, v in (("image_h", image_h), ("image_w", image_w)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 32:
            raise ValueError(f"{name}={v!r}: must be a positive multiple of 32 (one code covers 32x32 output pixels)")
    h, w = image_h // 32, image_w // 32
    for side in (h, w):
        pipe.tokenizer.size_token_id(side)  # raises ValueError naming the side
    return h, w


def run(pipe: Any, prompt: list[int], cfg: SamplerConfig, gen: Optional[torch.Generator], progress: Optional[Progress],
        stats: GenerationStats) -> SamplerResult:
    r = pipe.sampler.generate(prompt, cfg, generator=gen, progress=progress)
    stats.add(r)
    return r


def image_result(pipe: Any, r: SamplerResult, h: int, w: int, decode: bool, decoder_steps: Optional[int],
                 seed: Optional[int], **fields: Any) -> ImageResult:
    """The first h*w generated ids as codes, decoded to pixels when ``decode``."""
    codes = (r.generated[: h * w] - pipe.image_token_offset).cpu()
    result = ImageResult(codes, h, w, trace=r.trace, **fields)
    if decode:
        result.image = pipe.decode_image(codes, h, w, steps=decoder_steps, seed=seed)
    return result


def parse_header(pipe: Any, body: list[int], requested: tuple[int, int]) -> tuple[tuple[int, int], int]:
    """Find ``<|image|> <h> <w> <boi>`` at the end of ``body``: (grid, index where it starts).

    A malformed header (no <|image|>, or size ids that are not size tokens) is replaced by the
    requested one, starting where the model's <boi> stood."""
    sizes = {v: k for k, v in pipe.tokenizer.size_token_ids.items()}
    sp = pipe.tokenizer.special
    if len(body) >= 4 and body[-4] == sp.image_start and body[-3] in sizes and body[-2] in sizes:
        return (sizes[body[-3]], sizes[body[-2]]), len(body) - 4
    start = len(body) - 1
    if start >= 1 and body[start - 1] in sizes:
        start -= 1
    if start >= 1 and body[start - 1] in sizes:
        start -= 1
    if start >= 1 and body[start - 1] == sp.image_start:
        start -= 1
    return requested, start


def is_encoded(image: Any) -> bool:
    return isinstance(image, (ImageCodes, ImageResult)) or (
        hasattr(image, "codes") and hasattr(image, "h") and hasattr(image, "w") and not hasattr(image, "size")
    )


def as_codes(pipe: Any, image: Any, purpose: str) -> ImageCodes:
    """Codes of an image: kept when already encoded, else encoded with ``purpose``'s preprocessing."""
    if isinstance(image, ImageCodes):
        return image
    if isinstance(image, ImageResult):
        return image.as_codes
    if is_encoded(image):
        return ImageCodes(image.codes, image.h, image.w)
    try:
        toks = pipe.image_tokenizer.encode(image, purpose=purpose)
    except ValueError as exc:
        raise ValueError(f"cannot encode the image: {exc}") from None
    return ImageCodes(toks.codes, toks.h, toks.w)
