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


class _FakeGraph:
    """``torch.cuda.CUDAGraph`` on the CPU: filled by ``_fake_graph_context``, replayed emulated."""

    def __init__(self) -> None:
        self.emulated: EmulatedGraph | None = None

    def replay(self) -> None:
        if self.emulated is None:
            raise RuntimeError("replay of a graph that was never captured")
        self.emulated.replay()


class _fake_graph_context:
    """``torch.cuda.graph(g, pool=..., ...)``: records what runs inside, then undoes its writes."""

    def __init__(self, graph: _FakeGraph, pool: Any = None, **kwargs: Any) -> None:
        if pool is None or not isinstance(pool, tuple):
            raise RuntimeError(f"a graph pool handle was expected, got {pool!r}")
        self.graph = graph
        self.rec = _Recorder()

    def __enter__(self):
        self.rec.__enter__()
        return self

    def __exit__(self, *exc):
        self.rec.__exit__(*exc)
        for target, before in self.rec.saved.values():
            with torch.no_grad():
                target.copy_(before)
        self.graph.emulated = EmulatedGraph(self.rec.ops)
        return False


class _NoStream:
    def wait_stream(self, other: Any) -> None:
        pass


def emulate_cuda_graphs(monkeypatch) -> None:
    """Patch ``torch.cuda``'s stream and graph API with the CPU emulation above, so code written
    for CUDA graphs runs its real capture path on the CPU."""
    import contextlib

    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _NoStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _NoStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", _fake_graph_context)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool",))
