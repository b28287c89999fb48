"""The Flux VAE decoder (MODEL_SPEC §6.4), through diffusers' ``AutoencoderKL`` (imported lazily).

latent / scaling_factor + shift_factor -> ``vae.decode`` -> (x + 1) / 2 clamped to [0, 1] in the
VAE's dtype -> uint8 by truncation (x·255 then a cast, what torchvision's ``to_pil_image`` does
in the official code) -> PIL. The published factors are 0.3611 and 0.1159 and the VAE upsamples
8× (four blocks), which with the DiT's 2× patches and the ×2 code upsampling gives 32 pixels per
image code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ..checkpoint import CheckpointError
from ..config import ConfigError, brief, check_size_cap, check_type, read_json
from .compiling import CompiledOrEager

__all__ = ["VAEDecoder", "VAE_SIZE_CAPS", "VAE_SPATIAL_FACTOR", "check_vae_config", "pixels_to_pil"]

VAE_SPATIAL_FACTOR = 8


def pixels_to_pil(px: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) float in [0, 1] -> RGB images; values are scaled by 255 and truncated."""
    arr = (px.float() * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray(np.ascontiguousarray(a), mode="RGB") for a in arr]


#: Hard sanity caps on the VAE config (published: channels up to 512, 2 layers per block, 16
#: latent channels, 32 groups), checked before diffusers builds it; ``LLADAUNI_CONFIG_SIZE_SCALE``
#: multiplies them (``model_core.config``).
VAE_SIZE_CAPS = {
    "block_out_channels": 1 << 14,
    "layers_per_block": 64,
    "latent_channels": 1024,
    "in_channels": 64,
    "out_channels": 64,
    "norm_num_groups": 1024,
}


def check_vae_config(cfg_path: Path) -> dict:
    """``vae/config.json`` read and checked: an AutoencoderKL object whose sizes are positive
    integers under ``VAE_SIZE_CAPS`` and whose four blocks give the 8x factor. CheckpointError
    naming the file and the field otherwise."""
    try:
        cfg = read_json(cfg_path)
        if not isinstance(cfg, dict):
            raise ConfigError(f"expected a JSON object, got {type(cfg).__name__}")
        if cfg.get("_class_name") != "AutoencoderKL":
            raise ConfigError(f"_class_name={brief(cfg.get('_class_name'))}, expected 'AutoencoderKL'")
        for name, cap in VAE_SIZE_CAPS.items():
            value = cfg.get(name, 1)
            for item in value if isinstance(value, list) and name == "block_out_channels" else [value]:
                check_type(name, item, "int")
                if item <= 0:
                    raise ConfigError(f"{name}={brief(value)}: must be > 0")
                check_size_cap(name, item, cap)
    except ConfigError as exc:
        raise CheckpointError(str(exc) if str(exc).startswith(str(cfg_path)) else f"{cfg_path}: {exc}") from None
    blocks = cfg.get("block_out_channels")
    factor = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None
    if factor != VAE_SPATIAL_FACTOR:
        raise CheckpointError(
            f"{cfg_path}: block_out_channels={brief(blocks)} does not give a {VAE_SPATIAL_FACTOR}x VAE "
            f"(four blocks; 32 pixels per image code)"
        )
    return cfg


class VAEDecoder:
    """Holds a diffusers AutoencoderKL and turns DiT latents into pixels."""

    def __init__(self, vae: Any, *, tiling: bool = False, slicing: bool = False) -> None:
        self.vae = vae
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(cfg.shift_factor or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.compiled_decode: Optional[CompiledOrEager] = None  # set_compile's
        self.tiling = False
        self.set_tiling(tiling)
        if slicing:
            vae.enable_slicing()

    def set_tiling(self, enabled: bool) -> None:
        """Tiled decoding bounds memory for large images; tiles are blended, so pixels differ a
        little from a whole-image decode. It only acts on latents larger than the VAE's tile."""
        if enabled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()
        self.tiling = enabled

    def set_compile(self, mode: Optional[str]) -> None:
        """Decode through ``torch.compile(mode=mode)`` (None: eager). Tiled decodes stay eager
        (their tile loop would compile one graph per tile shape)."""
        self.compiled_decode = None if mode is None else CompiledOrEager(self.decode_scaled, name="decoder VAE", mode=mode)

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE on scaled latents z -> pixels in [0, 1], the VAE's dtype."""
        x = self.vae.decode(z, return_dict=False)[0]
        return ((x + 1) / 2).clamp_(0, 1)

    @classmethod
    def from_pretrained(
        cls,
        vae_dir: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tiling: bool = False,
        slicing: bool = False,
    ) -> "VAEDecoder":
        vae_dir = Path(vae_dir)
        cfg_path = vae_dir / "config.json"
        if not cfg_path.is_file():
            raise CheckpointError(f"{vae_dir}: no config.json; is this the model's vae/ folder?")
        check_vae_config(cfg_path)
        weights = vae_dir / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"weight file missing: {weights}")
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ImportError("the VAE needs diffusers: pip install 'diffusers>=0.36'") from None
        import importlib.util

        # Without accelerate diffusers falls back to a plain load anyway; say so instead of warning.
        low_mem = importlib.util.find_spec("accelerate") is not None
        try:
            vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=dtype, use_safetensors=True, low_cpu_mem_usage=low_mem)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{vae_dir}: cannot load the VAE ({type(exc).__name__}: {exc})") from None
        vae = vae.to(device).eval().requires_grad_(False)
        return cls(vae, tiling=tiling, slicing=slicing)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w), any float dtype -> pixels (B, 3, 8h, 8w) in [0, 1], VAE dtype."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents of shape {tuple(latents.shape)}: expected (B, {self.latent_channels}, h, w)")
        z = latents.to(self.dtype) / self.scaling_factor + self.shift_factor
        if self.compiled_decode is not None and not self.tiling:
            return self.compiled_decode(z)
        return self.decode_scaled(z)

    def to_pil(self, latents: torch.Tensor) -> list[Image.Image]:
        return pixels_to_pil(self.decode(latents))
