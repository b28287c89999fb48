"""Tiny random decoder files in the published layout, for tests, benchmarks and demos.

``write_tiny_decoder(ckpt_dir, seed)`` writes next to a (tiny) backbone checkpoint:

* ``decoder/`` and ``decoder-turbo/``: ``config.json`` with the published file's stale
  ``cap_feat_dim`` 2560 and ``axes_lens`` [1536, 512, 512] (so the loader's overrides run) and
  ``decoder_model.safetensors`` (bf16) of ``DiTConfig.tiny()`` (different weights per variant);
* ``vae/``: a four-block AutoencoderKL (8x, 16 latent channels, 16 channels per block, the
  published scaling/shift factors and sample_size 32 so tiled decoding can be exercised);
* ``image_tokenizer/sigvq_embedding.pt``: a fp32 state dict, codebook 16384, width 32.

Writing the VAE needs diffusers (imported here, lazily).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .config import DiTConfig
from .dit import ZImageDiT
from .loading import save_dit
from .sigvq import SIGVQ_PT, SigVQ

__all__ = ["write_tiny_decoder", "tiny_vae_config", "STALE_FILE_FIELDS"]

# What the published decoder config.json says (MODEL_SPEC §12); tiny files keep it stale too.
STALE_FILE_FIELDS = {"cap_feat_dim": 2560, "axes_lens": [1536, 512, 512]}


def tiny_vae_config() -> dict:
    """The published vae/config.json with small widths (block_out_channels [16]*4, groups 8)."""
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.30.0.dev0",
        "act_fn": "silu",
        "block_out_channels": [16, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 1,
        "mid_block_add_attention": True,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 32,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    }


@torch.no_grad()
def _random_fill(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Deterministic weights from ``generator`` whatever the module's own init did."""
    for name, p in module.named_parameters():
        r = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        if p.dim() > 1:
            p.copy_(r * (p[0].numel() ** -0.5))
        elif name.endswith("bias"):
            p.copy_(0.02 * r)
        else:
            p.copy_(1.0 + 0.1 * r)


def write_tiny_vae(vae_dir: Path, seed: int = 0, config: Optional[dict] = None) -> Path:
    from diffusers import AutoencoderKL

    cfg = config or tiny_vae_config()
    vae = AutoencoderKL.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    _random_fill(vae, torch.Generator().manual_seed(seed))
    vae.save_pretrained(vae_dir, safe_serialization=True)
    # Keep the published file's metadata fields (save_pretrained rewrites config.json).
    (vae_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return vae_dir


def write_tiny_decoder(ckpt_dir: Path, seed: int = 0, *, config: Optional[DiTConfig] = None, vae: bool = True) -> Path:
    """Write tiny decoder/, decoder-turbo/, vae/ and image_tokenizer/sigvq_embedding.pt under
    ``ckpt_dir`` (created if needed) and return ``ckpt_dir``."""
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    config = config or DiTConfig.tiny()
    gen = torch.Generator().manual_seed(seed)
    for folder in ("decoder", "decoder-turbo"):
        model = ZImageDiT(config)
        model.init_weights(gen)
        save_dit(model, root / folder, dtype=torch.bfloat16, file_config=dict(config.to_dict(), **STALE_FILE_FIELDS))
    sig = SigVQ(16384, config.cap_feat_dim)
    sig.init_weights(gen)
    (root / "image_tokenizer").mkdir(exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sig.state_dict().items()}, root / "image_tokenizer" / SIGVQ_PT)
    if vae:
        write_tiny_vae(root / "vae", seed=seed + 1)
    return root
