"""Fused norm benchmark at the block-step shapes: residual-add + RMSNorm over hidden 2048 and
QK-norm + partial RoPE over 16 + 4 heads of 128, for 32 and 64 tokens; vs the plain PyTorch references (reference.py).

    python -m lladauni.kernels.norm.bench [--tiny]
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

import torch

from .._bench import roofline, time_ms
from .op import qk_norm_rope, rms_norm
from .reference import qk_norm_rope_reference, rms_norm_reference

FULL = dict(H=2048, Hq=16, Hkv=4, D=128, R=64)
TINY = dict(H=64, Hq=4, Hkv=2, D=32, R=16)


def run(device: torch.device, tokens=(32, 64), *, tiny: bool = False, ceilings: Optional[dict] = None, iters: int = 50) -> list[dict[str, Any]]:
    s = TINY if tiny else FULL
    dt = torch.bfloat16
    rows = []
    for T in tokens:
        x = torch.randn(T, s["H"], device=device, dtype=dt)
        r = torch.randn_like(x)
        w = torch.ones(s["H"], device=device, dtype=dt)
        nbytes = 4 * x.numel() * 2
        ms = time_ms(lambda: rms_norm(x, w, 1e-6, residual=r), device, iters=iters)
        rows.append(roofline(f"add_rms_norm_triton_T{T}", ms, nbytes, 0, ceilings))
        ms = time_ms(lambda: rms_norm_reference(x, w, 1e-6, r), device, iters=iters)
        rows.append(roofline(f"add_rms_norm_torch_T{T}", ms, nbytes, 0, ceilings))
        Hq, Hkv, D = s["Hq"], s["Hkv"], s["D"]
        qkv = torch.randn(1, T, Hq + 2 * Hkv, D, device=device, dtype=dt)
        qw = torch.ones(D, device=device, dtype=dt)
        inv_freq = 1.0 / (600000.0 ** (torch.arange(0, s["R"], 2, device=device, dtype=torch.float32) / s["R"]))
        ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq[None]
        emb = torch.cat((ang, ang), dim=-1)[None]
        cos, sin = emb.cos().to(dt), emb.sin().to(dt)
        nbytes = 2 * (2 * T * (Hq + Hkv) * D + 2 * T * s["R"])
        ms = time_ms(lambda: qk_norm_rope(qkv, qw, qw, cos, sin, Hq, Hkv, 1e-6), device, iters=iters)
        rows.append(roofline(f"qk_norm_rope_triton_T{T}", ms, nbytes, 0, ceilings))

        ms = time_ms(lambda: qk_norm_rope_reference(qkv, qw, qw, cos, sin, Hq, Hkv, 1e-6), device, iters=iters)
        rows.append(roofline(f"qk_norm_rope_torch_T{T}", ms, nbytes, 0, ceilings))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(run(device, tiny=args.tiny), indent=2))


if __name__ == "__main__":
    main()
