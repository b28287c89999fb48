"""Typed results of the pipeline's tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from .prompts import ImageCodes
from .sampler import SamplerResult, StepRecord

__all__ = ["GenerationError", "GenerationStats", "TextResult", "ImageResult", "InterleavedResult"]


class GenerationError(RuntimeError):
    """The model's output cannot be used as asked (e.g. thinking mode wrote no image header)."""


@dataclass
class GenerationStats:
    forwards: int = 0
    forward_tokens: int = 0
    seconds: float = 0.0
    generated_tokens: int = 0

    def add(self, r: SamplerResult) -> None:
        self.forwards += r.forwards
        self.forward_tokens += r.forward_tokens
        self.seconds += r.seconds
        self.generated_tokens += int(r.generated.numel())


@dataclass
class TextResult:
    text: str
    token_ids: list[int]  # generated ids (through eos when it stopped there)
    prompt_ids: list[int]
    stats: GenerationStats
    trace: list[StepRecord] = field(default_factory=list)


@dataclass
class ImageResult:
    codes: torch.Tensor  # (h*w,) raw codes 0..16383, raster order
    h: int
    w: int
    image: Optional[Any] = None  # PIL.Image when decoded
    thinking: Optional[str] = None
    prompt_ids: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    trace: list[StepRecord] = field(default_factory=list)

    @property
    def as_codes(self) -> ImageCodes:
        return ImageCodes(self.codes, self.h, self.w)


@dataclass
class InterleavedResult:
    segments: list[Union[str, ImageResult]]
    stats: GenerationStats

    @property
    def text(self) -> str:
        return "".join(s if isinstance(s, str) else "<image>" for s in self.segments)

    @property
    def images(self) -> list[ImageResult]:
        return [s for s in self.segments if isinstance(s, ImageResult)]
