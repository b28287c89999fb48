"""A small random image tokenizer in the published layout, for tests, benchmarks and demos.

``write_tiny_image_tokenizer(ckpt_dir)`` writes ``ckpt_dir/image_tokenizer/`` with
``config.json`` (a GLM-Image config: ``ImageTokenizerConfig.tiny()`` unless another is given),
the published ``preprocessor_config.json`` and ``image_tokenizer.safetensors`` (bf16, as
published) under the published tensor names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from .image_config import ImageTokenizerConfig, PreprocessorConfig
from .image_tokenizer import CONFIG_NAME, PREPROCESSOR_NAME, TOKENIZER_DIR, SigLIPVQ

__all__ = ["write_tiny_image_tokenizer", "random_image_tokenizer"]

WEIGHTS_NAME = "image_tokenizer.safetensors"


def random_image_tokenizer(config: ImageTokenizerConfig, seed: int = 0) -> SigLIPVQ:
    """A network with random weights drawn from ``seed`` (fp32, CPU)."""
    net = SigLIPVQ(config)
    net.init_weights(torch.Generator().manual_seed(seed))
    return net.eval().requires_grad_(False)


def write_tiny_image_tokenizer(
    ckpt_dir: str | os.PathLike,
    seed: int = 0,
    *,
    config: Optional[ImageTokenizerConfig] = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write ``ckpt_dir/image_tokenizer/`` and return that directory."""
    out = Path(ckpt_dir) / TOKENIZER_DIR
    out.mkdir(parents=True, exist_ok=True)
    config = config or ImageTokenizerConfig.tiny()
    net = random_image_tokenizer(config, seed)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS_NAME)
    config.to_json_file(out / CONFIG_NAME)
    PreprocessorConfig().to_json_file(out / PREPROCESSOR_NAME)
    return out
