"""The diffusion decoder: image codes -> pixels (MODEL_SPEC §6).

SigVQ conditioner -> Z-Image DiT (velocity) driven by a flow-matching sampler -> Flux VAE.
Imports torch, safetensors, numpy and pillow only; the VAE imports diffusers when it loads.
"""

from .config import DiTConfig
from .dit import ZImageDiT
from .loading import LoadedDiT, load_dit, save_dit
from .pipeline import ImageDecoder, default_sampler
from .samplers import FlowEulerSampler, FlowRenoiseSampler, NoGuidance, NormClampedCFG
from .sigvq import SigVQ, load_sigvq
from .vae import VAEDecoder

__all__ = [
    "DiTConfig",
    "FlowEulerSampler",
    "FlowRenoiseSampler",
    "ImageDecoder",
    "LoadedDiT",
    "NoGuidance",
    "NormClampedCFG",
    "SigVQ",
    "VAEDecoder",
    "ZImageDiT",
    "default_sampler",
    "load_dit",
    "load_sigvq",
    "save_dit",
]
