"""Attention benchmark: the decoding step (32 queries over a 1,024-token prefix + the block,
16 query / 4 KV heads of 128, batch 1 and batch 2 with CFG padding) and block-causal prefill,
Triton kernel vs torch SDPA with the same mask made dense (built once, outside the timing, as the
backbone does once per forward).

    python -m lladauni.kernels.attention.bench [--tiny]
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

import torch

from .._bench import roofline, time_ms
from .op import block_attention

FULL = dict(Hq=16, Hkv=4, D=128, prefix=1024, block=32, prefill=4096)
TINY = dict(Hq=4, Hkv=2, D=32, prefix=64, block=32, prefill=96)


def run(device: torch.device, *, tiny: bool = False, ceilings: Optional[dict] = None, iters: int = 20) -> list[dict[str, Any]]:
    import torch.nn.functional as F

    s = TINY if tiny else FULL
    Hq, Hkv, D = s["Hq"], s["Hkv"], s["D"]
    rows = []
    cases = [(f"decode_B{B}", B, s["block"], s["prefix"] + s["block"]) for B in (1, 2)]
    cases.append(("prefill_block_causal", 1, s["prefill"], s["prefill"]))
    for name, B, Q, S in cases:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(B, Hq, Q, D, device=device, dtype=torch.bfloat16, generator=g)
        k = torch.randn(B, Hkv, S, D, device=device, dtype=torch.bfloat16, generator=g)
        v = torch.randn(B, Hkv, S, D, device=device, dtype=torch.bfloat16, generator=g)
        kb = torch.arange(S, device=device) // s["block"]
        qb = kb[S - Q:]
        valid = None
        if name.startswith("decode"):
            if B == 2:  # the CFG branch's left-padded null prompt
                valid = torch.ones(B, S, dtype=torch.bool, device=device)
                valid[1, : S // 4] = False
            visible = Q * S
        else:
            nb = S // s["block"]
            visible = s["block"] ** 2 * nb * (nb + 1) // 2
        dense = (kb[None, :] <= qb[:, None])[None, None]
        if valid is not None:
            dense = dense & valid[:, None, None, :]
        nbytes = 2 * (q.numel() * 2 + k.numel() + v.numel())
        flops = 4 * B * Hq * visible * D
        cases_fn = (
            ("triton", lambda: block_attention(q, k, v, qb, kb, valid, D**-0.5)),
            ("sdpa", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=D**-0.5, enable_gqa=True)),
        )
        for backend, fn in cases_fn:
            ms = time_ms(fn, device, iters=iters)
            rows.append(roofline(f"attention_{backend}_{name}", ms, nbytes, flops, ceilings))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(run(device, tiny=args.tiny), indent=2))


if __name__ == "__main__":
    main()
