"""Fused MoE benchmark at the block-step shapes (E=256, H=2048, I=512, top-8), and a small
launch-config sweep that writes ``configs/<device>.json``.

    python -m lladauni.kernels.moe.bench [--tokens 32 64] [--tune] [--tiny]    # --tiny: CPU-sized smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .._bench import roofline, time_ms
from .._triton import device_key
from .op import fused_moe
from .reference import quantize_experts

FULL = dict(E=256, H=2048, I=512, K=8)
TINY = dict(E=16, H=64, I=32, K=4)


def _inputs(T: int, E: int, H: int, I: int, K: int, device: torch.device, dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(T, H, device=device, dtype=dtype, generator=g)
    gu = torch.randn(E, 2 * I, H, device=device, dtype=dtype, generator=g) * 0.02
    dn = torch.randn(E, H, I, device=device, dtype=dtype, generator=g) * 0.02
    ids = torch.rand(T, E, device=device, generator=g).topk(K, dim=-1).indices  # distinct, uniform
    w = torch.rand(T, K, device=device, generator=g)
    return x, gu, dn, ids, w


def _traffic(ids: torch.Tensor, T: int, E: int, H: int, I: int, K: int, wbytes: float, abytes: int) -> tuple[float, float]:
    touched = int(torch.unique(ids).numel())  # measured outside the timed region
    nbytes = touched * 3 * H * I * wbytes + T * H * abytes * 2 + T * K * (I * abytes * 2 + H * 4 * 2)
    flops = 2 * T * K * 3 * H * I
    return nbytes, flops


def run(device: torch.device, tokens=(32, 64), *, tiny: bool = False, ceilings: Optional[dict] = None,
        iters: int = 20, loop: Optional[Callable] = None, config: Optional[dict] = None) -> list[dict[str, Any]]:
    """``loop``: a torch per-expert path to time beside the kernel (the caller passes the model's,
    ``lladauni.model_core.moe.loop_moe``; this package imports nothing of lladauni's)."""
    shape = TINY if tiny else FULL
    E, H, I, K = shape["E"], shape["H"], shape["I"], shape["K"]
    rows = []
    for T in tokens:
        x, gu, dn, ids, w = _inputs(T, E, H, I, K, device)
        nbytes, flops = _traffic(ids, T, E, H, I, K, 2, 2)
        ms = time_ms(lambda: fused_moe(x, gu, dn, ids, w, config=config), device, iters=iters)
        rows.append(roofline(f"moe_triton_bf16_T{T}", ms, nbytes, flops, ceilings, experts_touched=int(torch.unique(ids).numel())))
        if device.type == "cuda":
            ms = time_ms(lambda: fused_moe(x, gu, dn, ids, w, config=config), device, iters=iters, graph=True)
            rows.append(roofline(f"moe_triton_bf16_T{T}_graph", ms, nbytes, flops, ceilings))
        if loop is not None:
            ms = time_ms(lambda: loop(x, gu, dn, ids, w), device, iters=max(3, iters // 4))
            rows.append(roofline(f"moe_loop_bf16_T{T}", ms, nbytes, flops, ceilings))
        if H % 128 == 0 and I % 128 == 0:
            gq, gs, dq, ds = quantize_experts(gu, dn)
            del gu, dn
            nb8, _ = _traffic(ids, T, E, H, I, K, 1 + 4 / (128 * 128), 2)
            fn = lambda: fused_moe(x, gq, dq, ids, w, gs, ds)  # noqa: E731
            ms = time_ms(fn, device, iters=iters, graph=device.type == "cuda")
            rows.append(roofline(f"moe_triton_fp8_T{T}" + ("_graph" if device.type == "cuda" else ""), ms, nb8, flops, ceilings))
    return rows


def tune(device: torch.device, tokens=(32, 64), iters: int = 10) -> dict[str, Any]:
    """Try a small grid of tile sizes per kernel and token count; returns the best table."""
    E, H, I, K = FULL["E"], FULL["H"], FULL["I"], FULL["K"]
    best: dict[str, dict[str, Any]] = {"gate_up": {}, "down": {}}
    space = [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=nw, num_stages=ns)
             for bn, bk, nw, ns in itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (3, 4))]
    for T in tokens:
        x, gu, dn, ids, w = _inputs(T, E, H, I, K, device)
        base = {"gate_up": space[0], "down": space[0], "combine": {"BLOCK_H": 512, "num_warps": 4}}
        for kind in ("gate_up", "down"):
            timed = []
            for cand in space:
                cfg = dict(base, **{kind: cand})
                try:
                    timed.append((time_ms(lambda: fused_moe(x, gu, dn, ids, w, config=cfg), device, iters=iters, graph=True), cand))
                except Exception:  # a config that does not fit (shared memory) is skipped
                    continue
            ms, cand = min(timed, key=lambda t: t[0])
            best[kind][str(T)] = cand
            base[kind] = cand
    best["combine"] = {"1": {"BLOCK_H": 512, "num_warps": 4}}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--tiny", action="store_true", help="CPU-sized shapes (runs under TRITON_INTERPRET=1)")
    ap.add_argument("--tune", action="store_true", help="sweep tile sizes and write configs/<device>.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tune:
        table = tune(device, args.tokens)
        path = Path(__file__).parent / "configs" / f"{device_key(device)}.json"
        default = json.loads((path.parent / "default.json").read_text())
        table.update({k: v for k, v in default.items() if k.endswith("_fp8")})
        path.write_text(json.dumps(table, indent=2) + "\n")
        print(f"wrote {path}")
    print(json.dumps(run(device, args.tokens, tiny=args.tiny), indent=2))


if __name__ == "__main__":
    main()
