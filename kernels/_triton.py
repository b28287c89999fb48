"""Optional Triton import and launch-config lookup shared by the kernel packages.

``kernels`` must import where Triton is missing (CPU CI without the ``gpu`` extra), so every
``kernel.py`` is imported lazily through :func:`require_triton`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["HAS_TRITON", "has_module", "launch_problem", "require_triton", "interpreting", "can_launch", "load_config", "device_key", "patch_interpreter"]

def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a blocking import hook, or sys.modules[name] = None
        return False


HAS_TRITON: bool = has_module("triton")


NO_TRITON = "these kernels need Triton: pip install 'lladauni-agent[gpu]' (or triton)"


def launch_problem(*tensors: torch.Tensor) -> Optional[str]:
    """Why no Triton kernel can run on these tensors (Triton missing, or tensors where no kernel
    runs: CPU without TRITON_INTERPRET=1); None when one can. Metadata only."""
    if not HAS_TRITON:
        return NO_TRITON
    if tensors and not can_launch(*tensors):
        where = sorted({str(t.device) for t in tensors})
        return f"tensors on {where}: Triton kernels run on CUDA, or on CPU with TRITON_INTERPRET=1"
    return None


def require_triton(*tensors: torch.Tensor) -> None:
    """RuntimeError naming the missing extra when Triton is not installed; ValueError when the
    tensors are where no Triton kernel runs (``launch_problem``)."""
    problem = launch_problem(*tensors)
    if problem == NO_TRITON:
        raise RuntimeError(problem)
    patch_interpreter()
    if problem:
        raise ValueError(problem)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def can_launch(*tensors: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on these tensors: CUDA tensors with Triton installed, or
    CPU tensors under the interpreter."""
    if not HAS_TRITON:
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)


def device_key(device: torch.device) -> str:
    """File-name key of a device's tuned configs, e.g. ``NVIDIA_H200``; ``cpu`` otherwise."""
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device).replace(" ", "_").replace("/", "_")


@functools.lru_cache(maxsize=None)
def _read(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_config(op_dir: Path, device: torch.device, name: str, m: int) -> dict[str, Any]:
    """Launch config for ``name`` at ``m`` rows: from ``configs/<device>.json`` when present,
    else ``configs/default.json``; the entry whose token-count key is nearest to ``m``.

    A file maps a kernel name to {"<tokens>": {"BLOCK_M": .., "num_warps": .., ...}}.
    """
    cfg_dir = op_dir / "configs"
    for fname in (f"{device_key(device)}.json", "default.json"):
        path = cfg_dir / fname
        if path.is_file():
            table = _read(str(path)).get(name)
            if table:
                key = min(table, key=lambda k: abs(int(k) - m))
                return dict(table[key])
    raise FileNotFoundError(f"no launch config for {name!r} under {cfg_dir}")


_PATCHED = False


def patch_interpreter() -> None:
    """Work around two Triton interpreter bugs with bfloat16 (3.x, seen in 3.9), so that CPU
    runs reproduce the GPU's numbers: ``tl.dot`` on bf16 operands multiplies their raw uint16
    storage (we upcast to fp32, which is exact and matches bf16 MMA with fp32 accumulation), and
    fp32 -> bf16 casts truncate (the GPU rounds to nearest even). No effect unless
    TRITON_INTERPRET=1; idempotent."""
    global _PATCHED
    if _PATCHED or not HAS_TRITON or not interpreting():
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def up(h):
            if h.dtype.scalar == tl.bfloat16:
                data = (h.data.astype(np.uint32) << 16).view(np.float32)
                return interpreter.TensorHandle(data, tl.float32)
            return h

        return original(self, up(a), up(b), d, input_precision, max_num_imprecise_acc)

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            u = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            rounded = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
            rounded = np.where(np.isnan(src.data), np.uint16(0x7FC0), rounded)
            return interpreter.TensorHandle(rounded.reshape(np.shape(src.data)), tl.bfloat16)
        return original_cast(self, src, dst_type)

    original_cast = builder.cast_impl
    builder.create_dot = create_dot
    builder.cast_impl = cast_impl
    # The lambdas bound at class creation call cast_impl through self, so they pick this up.
    _PATCHED = True
