"""How model_core pulls ``lladauni.kernels``: by capability, per call, with the torch path as
the fallback for anything a kernel does not serve.

The kernels take plain tensors and import nothing of ours; this module imports them lazily, asks
each op's ``unsupported(...)`` (metadata only: no launch, no host sync) whether it serves a
call, and the ``auto`` backends of attention and MoE use the kernel only when it does. So
``auto`` never raises where the torch path would not: the image tokenizer's ViT (head_dim 96)
runs on SDPA beside a backbone that runs the Triton kernel.

Nothing here is silent. A kernels module that fails to import is reported once, with its cause
(a ``RuntimeWarning`` and a log record), and so is a CUDA call that runs the torch path only
because Triton is missing. ``kernel_status()`` says what was found.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType
from typing import Optional

import torch

__all__ = ["kernel_module", "kernel_status", "report_once"]

log = logging.getLogger("lladauni.kernels")

_OPS = ("attention", "moe")
_MODULES: dict[str, Optional[ModuleType]] = {}
_ERRORS: dict[str, str] = {}
_REPORTED: set[str] = set()


def report_once(key: str, message: str) -> None:
    """Warn (RuntimeWarning) and log ``message`` the first time ``key`` is seen in this process."""
    if key in _REPORTED:
        return
    _REPORTED.add(key)
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def kernel_module(op: str) -> Optional[ModuleType]:
    """``lladauni.kernels.<op>.op``, imported once; None (reported once, with the cause) when
    the import fails."""
    if op not in _OPS:
        raise ValueError(f"unknown kernel op {op!r}; one of {list(_OPS)}")
    if op not in _MODULES:
        try:
            _MODULES[op] = importlib.import_module(f"lladauni.kernels.{op}.op")
        except Exception as e:  # a broken install must say so, not quietly run the slow path
            _MODULES[op] = None
            _ERRORS[op] = f"{type(e).__name__}: {e}"
            report_once(
                f"import:{op}",
                f"lladauni.kernels.{op} failed to import ({_ERRORS[op]}); {op} runs its PyTorch path. "
                "Reinstall lladauni-agent (and the 'gpu' extra for Triton) to get the kernels back.",
            )
    return _MODULES[op]


def triton_missing_on_cuda(op: str, module: ModuleType) -> None:
    """Report once that a CUDA call runs the torch path because Triton is not installed."""
    if not module.HAS_TRITON:
        report_once(
            f"triton:{op}",
            f"Triton is not installed: {op} on CUDA runs the PyTorch path. "
            "pip install \"lladauni-agent[gpu]\" for the fused kernels.",
        )


def kernel_status() -> dict[str, object]:
    """What the kernels offer here: per op 'ok' or the import error, plus Triton / CUDA /
    flash-attn availability."""
    status: dict[str, object] = {op: ("ok" if kernel_module(op) is not None else _ERRORS[op]) for op in _OPS}
    attn = _MODULES.get("attention")
    status["triton"] = bool(attn is not None and attn.HAS_TRITON)
    status["flash_attn"] = bool(attn is not None and attn.HAS_FLASH_ATTN)
    status["cuda"] = torch.cuda.is_available()
    return status
