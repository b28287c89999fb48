"""Shared set-up of the kernel tests: interpreter mode, device, tolerances, NaN-filled buffers.

Importing this module sets TRITON_INTERPRET=1 when no CUDA device is present, before any
``kernels/*/kernel.py`` (and so any ``@triton.jit``) is imported, so the same sweeps run through
the Triton interpreter on CPU and on the GPU where there is one.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from lladauni.kernels._triton import HAS_TRITON  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
# GPU-only tests carry both: ``@pytest.mark.gpu`` (select/deselect with -m) and this skip.
requires_cuda = pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA device and triton")

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# (atol, rtol) for torch.testing.assert_close, one table for all kernel tests.
# "ref": against the op's fp32 ground truth (reference.py); "torch": against the backbone's own
# PyTorch path in the same dtype (loop_moe, eager attention, model_core norms), which rounds at
# the same places, so it is tighter.
TOLERANCES: dict[tuple[str, str, torch.dtype], tuple[float, float]] = {
    ("moe", "ref", F32): (1e-5, 1e-5),
    ("moe", "ref", BF16): (3e-2, 3e-2),
    ("moe", "ref", F16): (3e-3, 3e-3),
    ("moe", "torch", F32): (1e-5, 1e-5),
    ("moe", "torch", BF16): (1e-2, 1e-2),
    ("moe", "torch", F16): (2e-3, 2e-3),
    ("moe_fp8", "ref", BF16): (5e-2, 5e-2),
    ("attention", "ref", F32): (2e-5, 2e-5),
    ("attention", "ref", BF16): (2e-2, 2e-2),
    ("attention", "ref", F16): (3e-3, 3e-3),
    ("norm", "ref", F32): (1e-5, 1e-5),
    ("norm", "ref", BF16): (2e-2, 2e-2),
    ("norm", "ref", F16): (3e-3, 3e-3),
    ("norm", "torch", F32): (1e-5, 1e-5),
    ("norm", "torch", BF16): (8e-3, 8e-3),  # one bf16 ulp where sqrt/rsqrt differ
    ("norm", "torch", F16): (1e-3, 1e-3),
    ("backbone", "torch", F32): (1e-4, 1e-4),
    ("backbone", "torch", BF16): (1e-1, 5e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, op: str, against: str, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[(op, against, dtype)]
    assert not torch.isnan(actual).any(), "output has NaN (a kernel left part of a buffer unwritten?)"
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol)


class _NanTorch:
    """``torch`` as seen by an op module, except that new buffers start as NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _nan(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.dtype != torch.float8_e4m3fn:
            t.fill_(math.nan)
        return t

    def empty(self, *args, **kwargs):
        return self._nan(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._nan(torch.empty_like(*args, **kwargs))


@pytest.fixture
def nan_buffers(monkeypatch):
    """Every output and intermediate buffer the kernel ops allocate is pre-filled with NaN."""
    import lladauni.kernels.attention.op as attention_op
    import lladauni.kernels.moe.op as moe_op
    import lladauni.kernels.norm.op as norm_op

    for mod in (moe_op, attention_op, norm_op):
        monkeypatch.setattr(mod, "torch", _NanTorch())
    yield


def randn(*shape: int, dtype: torch.dtype = F32, scale: float = 1.0, gen: torch.Generator | None = None) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)
