"""Fused router benchmark at the published shape (256 experts in 8 groups, 4 groups kept, top-8)
for 2 (CFG decode), 32 and 64 tokens: the kernel (eager and, on CUDA, graph-replayed) vs a torch
routing path from the same fp32 logits.

    python -m lladauni.kernels.routing.bench [--tokens 2 32 64] [--tiny]
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Optional

import torch

from .._bench import roofline, time_ms
from .op import group_topk_route
from .reference import group_topk_route_reference

FULL = dict(E=256, G=8, TG=4, K=8)
TINY = dict(E=16, G=4, TG=2, K=4)
SCALING = 2.5


def run(device: torch.device, tokens=(2, 32, 64), *, tiny: bool = False, ceilings: Optional[dict] = None,
        iters: int = 50, torch_route: Optional[Callable] = None) -> list[dict[str, Any]]:
    """``torch_route(logits, bias, n_group, topk_group, top_k, scaling) -> (ids, weights)``: the
    torch path timed beside the kernel (the caller may pass the model's; default: ``reference.py``,
    whose stable sorts are slower than ``torch.topk``)."""
    s = TINY if tiny else FULL
    E, G, TG, K = s["E"], s["G"], s["TG"], s["K"]
    baseline = torch_route or group_topk_route_reference
    g = torch.Generator(device=device).manual_seed(0)
    bias = torch.randn(E, device=device, generator=g) * 0.1
    rows = []
    for T in tokens:
        logits = torch.randn(T, E, device=device, generator=g)
        nbytes = T * E * 4 + E * 4 + T * K * (8 + 4)
        fn = lambda: group_topk_route(logits, bias, G, TG, K, SCALING)  # noqa: E731
        rows.append(roofline(f"route_triton_T{T}", time_ms(fn, device, iters=iters), nbytes, 0, ceilings))
        if device.type == "cuda":
            rows.append(roofline(f"route_triton_T{T}_graph", time_ms(fn, device, iters=iters, graph=True), nbytes, 0, ceilings))
        ms = time_ms(lambda: baseline(logits, bias, G, TG, K, SCALING), device, iters=iters)
        rows.append(roofline(f"route_torch_T{T}", ms, nbytes, 0, ceilings))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[2, 32, 64])
    ap.add_argument("--tiny", action="store_true", help="CPU-sized shapes (runs under TRITON_INTERPRET=1)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(run(device, args.tokens, tiny=args.tiny), indent=2))


if __name__ == "__main__":
    main()
