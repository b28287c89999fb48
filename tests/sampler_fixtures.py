"""What the sampler tests share: the tiny checkpoint's special ids, random prompts and one seeded
generation (the tiny backbone and its sampler are conftest's ``model`` / ``sampler`` fixtures)."""

from __future__ import annotations

import torch

from lladauni.model_core.generation import SamplerConfig

MASK, EOS, OFFSET = 156895, 156892, 157184


def prompt_ids(n: int, seed: int = 0, hi: int = 150000) -> list[int]:
    return torch.randint(0, hi, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_seeded(sampler, prompt, seed: int = 0, **kw):
    return sampler.generate(prompt, SamplerConfig(**kw), generator=torch.Generator().manual_seed(seed))

