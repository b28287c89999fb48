"""RMSNorm as the published backbone computes it, with the fused Triton kernel on CUDA.

Which implementation runs is a per-module setting, ``kernel``: None (auto: the kernel of
``lladauni.kernels.norm`` where it serves the call, which is CUDA with Triton; the PyTorch code
otherwise), True (the kernel, raising where it cannot run) or False (PyTorch). ``LLaDA2Backbone.
set_backends(norm=...)`` sets it for the whole model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..kernel_choice import kernel_module, kernel_wanted

__all__ = ["RMSNorm", "rms_norm", "add_rms_norm", "norm_kernel_wanted"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise over the last dim in fp32, cast back to ``x``'s dtype, then scale.

    The order matters for bf16 exactness: the official code multiplies by the weight after
    casting the normalised values back to the input dtype.
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def norm_kernel_wanted(kernel: Optional[bool], kind: str, *args: object) -> bool:
    """Whether to run the norm kernel ``kind`` for this call under setting ``kernel``."""
    first = args[0]
    return kernel_wanted(kernel, "norm", isinstance(first, torch.Tensor) and first.is_cuda, kind, *args)


def _norm_op():
    op = kernel_module("norm")
    if op is None:
        raise RuntimeError("the norm kernels failed to import (see the warning above); use norm='torch'")
    return op


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernel: Optional[bool] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if norm_kernel_wanted(self.kernel, "rms_norm", x, self.weight):
            return _norm_op().rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(residual + x), residual + x): the residual add and the next norm, in one kernel
    launch where the kernel serves the call (the sum rounded to the activation dtype first, as
    ``x = x + a`` does)."""
    if norm_kernel_wanted(norm.kernel, "rms_norm", x, norm.weight, residual):
        normed, summed = _norm_op().rms_norm(x, norm.weight, norm.eps, residual=residual)
        return normed, summed
    summed = residual + x
    return rms_norm(summed, norm.weight, norm.eps), summed
