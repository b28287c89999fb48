"""Timing and roofline helpers shared by the ``kernels/<op>/bench.py`` scripts."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["time_ms", "roofline", "CEILINGS"]

# H200 ceilings quoted in PERF_ANCHORS.md (measured copy bandwidth; dense bf16 peak as
# measured by a large GEMM). bench/gpu_kernels.py re-measures them and passes its own.
CEILINGS = {"gbps": 4300.0, "tflops": 790.0}


def time_ms(fn: Callable[[], Any], device: torch.device, *, warmup: int | None = None, iters: int = 20, graph: bool = False) -> float:
    """Median milliseconds per call. On CUDA each call is timed with events; with ``graph``
    the call is captured once in a CUDA graph and the replays are timed (no launch overhead).
    ``warmup`` defaults to min(3, iters)."""
    warmup = min(3, iters) if warmup is None else warmup
    if device.type != "cuda":
        for _ in range(max(1, warmup)):
            fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
        run()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def roofline(name: str, ms: float, nbytes: float, flops: float, ceilings: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """One result row: time, achieved GB/s and TFLOP/s, and their share of the ceilings."""
    c = ceilings or CEILINGS
    gbps = nbytes / (ms * 1e-3) / 1e9 if ms > 0 else 0.0
    tflops = flops / (ms * 1e-3) / 1e12 if ms > 0 else 0.0
    return {
        "name": name, "ms": round(ms, 4), "bytes": int(nbytes), "flops": int(flops),
        "gbps": round(gbps, 1), "tflops": round(tflops, 2),
        "pct_bandwidth": round(100 * gbps / c["gbps"], 1), "pct_compute": round(100 * tflops / c["tflops"], 2),
        **extra,
    }
