"""Triton kernels beside plain PyTorch references: fused MoE, block-masked attention, fused norms.

Each op lives in ``kernels/<op>/`` (``reference.py`` fp32 ground truth, ``kernel.py`` the
``@triton.jit`` code, ``op.py`` the checked host wrapper, ``bench.py``). Importing this package
needs only torch; Triton (the ``gpu`` extra) is imported when a kernel first runs.

``register()`` adds the backends to ``model_core``'s switches:

- attention ``triton``: :func:`kernels.attention.attention`, any ``AttentionMask``, no host sync;
- attention ``flash`` (only when flash-attn is installed): flash-attn for masks that hide
  nothing, the Triton kernel otherwise;
- MoE ``triton``: :func:`kernels.moe.fused_moe`.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON
from .attention import block_attention
from .attention.op import HAS_FLASH_ATTN
from .moe import fused_moe
from .norm import qk_norm_rope, rms_norm

__all__ = ["available", "block_attention", "fused_moe", "qk_norm_rope", "register", "rms_norm"]


def available() -> dict[str, bool]:
    """What this machine can run: Triton installed, a CUDA device, flash-attn installed."""
    return {"triton": HAS_TRITON, "cuda": torch.cuda.is_available(), "flash_attn": HAS_FLASH_ATTN}


def register() -> list[str]:
    """Register this package's backends with ``model_core`` (idempotent); returns their names
    as ``attention:<name>`` / ``moe:<name>``. Registers nothing when Triton is missing."""
    if not HAS_TRITON:
        return []
    from model_core.layers.attention import register_attention_backend
    from model_core.moe import register_moe_backend

    from .attention import attention, flash_attention

    names = ["attention:triton", "moe:triton"]
    register_attention_backend("triton", attention)
    register_moe_backend("triton", fused_moe)
    if HAS_FLASH_ATTN:
        register_attention_backend("flash", flash_attention)
        names.append("attention:flash")
    return names
