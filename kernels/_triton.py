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
from typing import Any

import torch

__all__ = ["HAS_TRITON", "require_triton", "interpreting", "can_launch", "load_config", "device_key", "patch_interpreter"]

HAS_TRITON: bool = importlib.util.find_spec("triton") is not None


def require_triton() -> None:
    """Raise a RuntimeError naming the missing extra when Triton is not installed."""
    if not HAS_TRITON:
        raise RuntimeError("these kernels need Triton: pip install 'lladauni-agent[gpu]' (or triton)")
    patch_interpreter()


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
    """Work around a Triton interpreter bug (3.x, seen in 3.9): ``tl.dot`` on bfloat16 operands
    multiplies their raw uint16 storage. Upcasting to fp32 is exact and matches the GPU's bf16
    MMA with fp32 accumulation. No effect unless TRITON_INTERPRET=1; idempotent."""
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

    builder.create_dot = create_dot
    _PATCHED = True
