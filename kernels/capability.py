"""What this machine can run, for ``lladauni.kernels``: Triton kernels beside plain PyTorch
references (fused MoE incl. FP8 experts, block-masked attention, fused norms).

Each op lives in ``kernels/<op>/`` (``reference.py`` fp32 ground truth, ``kernel.py`` the
``@triton.jit`` code, ``op.py`` the checked host wrapper with ``unsupported(...)``, ``bench.py``).
Every op takes plain tensors; this package imports nothing else of lladauni. Importing it needs
only torch; Triton (the ``gpu`` extra) is imported when a kernel first runs. ``lladauni.kernels``
has no ``__init__`` on purpose: the repository folder ``kernels/`` must never shadow the Hugging
Face ``kernels`` distribution when Python runs from the checkout.
"""

from __future__ import annotations

import torch

from ._triton import HAS_TRITON, can_launch, interpreting
from .attention.op import HAS_FLASH_ATTN

__all__ = ["HAS_FLASH_ATTN", "HAS_TRITON", "available", "can_launch", "interpreting"]


def available() -> dict[str, bool]:
    """What this machine can run: Triton installed, a CUDA device, flash-attn installed."""
    return {"triton": HAS_TRITON, "cuda": torch.cuda.is_available(), "flash_attn": HAS_FLASH_ATTN}
