"""Block-diffusion generation: the sampler, its policies and prompt builders."""

from .sampler import BlockDiffusionSampler, CFGSpec, SamplerConfig, SamplerResult, StepRecord
from .sprint import SprintConfig

__all__ = ["BlockDiffusionSampler", "CFGSpec", "SamplerConfig", "SamplerResult", "SprintConfig", "StepRecord"]
