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

from .extras import DISTRIBUTION

__all__ = ["kernel_module", "kernel_serves", "kernel_wanted", "kernel_status", "report_once", "KERNEL_SETTINGS"]

# A module's kernel setting by backend name: None = auto (``kernel_serves``), True = forced, False = torch.
KERNEL_SETTINGS = {"auto": None, "triton": True, "torch": False}

log = logging.getLogger("lladauni.kernels")

_OPS = ("attention", "moe", "norm", "routing")
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
                f"Reinstall {DISTRIBUTION} (and the 'gpu' extra for Triton) to get the kernels back.",
            )
    return _MODULES[op]


def kernel_serves(op: str, kernel_device: bool, *args: object) -> bool:
    """Whether ``auto`` runs the kernel of ``op`` for a call: only on a kernel device, only when
    the kernels imported, and only when ``unsupported(*args)`` finds nothing (metadata only: no
    launch, no host sync). A refusal on a kernel device goes through ``report_fallback``."""
    if not kernel_device:
        return False
    module = kernel_module(op)
    if module is None:
        return False
    reason = module.unsupported(*args)
    if reason is None:
        return True
    report_fallback(op, module, reason)
    return False


def kernel_wanted(setting: Optional[bool], op: str, kernel_device: bool, *args: object) -> bool:
    """Whether to run ``op``'s kernel under a module's setting (``KERNEL_SETTINGS``): forced on or
    off, or, for None, ``kernel_serves``."""
    if setting is None:
        return kernel_serves(op, kernel_device, *args)
    return setting


def report_fallback(op: str, module: ModuleType, reason: str) -> None:
    """A kernel refused a call on a kernel device for ``reason``. A shape it does not serve is the
    designed fallback and stays quiet; a refusal because Triton is missing is reported once."""
    if reason == module.NO_TRITON:
        report_once(
            f"triton:{op}",
            f"Triton is not installed: {op} on CUDA runs the PyTorch path. "
            f"pip install \"{DISTRIBUTION}[gpu]\" for the fused kernels.",
        )


def kernel_status() -> dict[str, object]:
    """What the kernels offer here: per op 'ok' or the import error, plus the kernels' own
    ``available()`` (Triton, CUDA, flash-attn)."""
    status: dict[str, object] = {op: ("ok" if kernel_module(op) is not None else _ERRORS[op]) for op in _OPS}
    if _MODULES["attention"] is not None:
        from lladauni.kernels.capability import available

        status.update(available())
    else:
        status.update(triton=False, flash_attn=False, cuda=torch.cuda.is_available())
    return status
