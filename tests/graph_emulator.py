"""CUDA-graph capture emulated on the CPU, for testing code meant to be captured.

A CUDA graph records kernels with their tensor addresses and scalar arguments fixed at capture,
executes nothing while recording, and on each replay runs the same kernels on whatever those
addresses hold then. ``record(fn)`` does the same at the ATen level: it runs ``fn`` under a
dispatch mode that records every op with its arguments (tensors by identity), refuses the ops
that synchronise with the host or size their output from data (what capture forbids), and then
undoes every in-place write it saw, so recording leaves no effect, as capture does. ``replay()``
reruns the recorded ops on the recorded tensors, writing fresh results into the recorded outputs;
Python code in ``fn`` does not run again, so per-call Python state would go stale, as it would in
a real graph.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
# host syncs and data-dependent output shapes: not capturable
FORBIDDEN = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default,
             aten._unique2.default, aten.bincount.default, aten.repeat_interleave.Tensor}


class CaptureViolation(AssertionError):
    pass


def _writes(func) -> list[int]:
    """Indices of the arguments this op writes into (in-place and out= ops)."""
    return [i for i, a in enumerate(func._schema.arguments) if a.alias_info is not None and a.alias_info.is_write]


def _aliases_input(func) -> bool:
    return any(r.alias_info is not None for r in func._schema.returns)


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FORBIDDEN:
            raise CaptureViolation(f"{func} inside a captured function (host sync or data-dependent shape)")
        for i in _writes(func):
            target = args[i] if i < len(args) else kwargs.get(func._schema.arguments[i].name)
            if isinstance(target, torch.Tensor) and id(target) not in self.saved:
                self.saved[id(target)] = (target, target.detach().clone())
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class EmulatedGraph:
    def __init__(self, ops: list) -> None:
        self.ops = ops

    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            fresh = func(*args, **kwargs)
            if _aliases_input(func):  # views and in-place ops: the recorded tensors already see it
                continue
            for old, new in zip(tree_flatten(out)[0], tree_flatten(fresh)[0]):
                if isinstance(old, torch.Tensor):
                    old.copy_(new)


def record(fn: Callable[[], Any]) -> tuple[EmulatedGraph, Any]:
    """-> (graph, fn's output tensors, to be read after each replay). Leaves no effect."""
    rec = _Recorder()
    with rec:
        out = fn()
    for target, before in rec.saved.values():  # capture executes nothing: undo the writes
        with torch.no_grad():
            target.copy_(before)
    return EmulatedGraph(rec.ops), out
