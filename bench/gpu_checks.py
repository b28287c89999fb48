"""The kernel chooser on a real GPU: what ``auto`` picks for each published attention and MoE call
shape, and how far its answer is from the fp32 eager reference; printed as JSON.

    python bench/gpu_checks.py            # on the device machine (CUDA)
    python bench/gpu_checks.py --dry-run  # CPU: tiny lengths, decided as on a GPU is not possible

Attention calls (random inputs, the published head layouts): the backbone's CFG block step (2 rows,
32 active tokens over 1,024 cached, 16/4 heads of 128), the image tokenizer's ViT over a 1024²
image (4,096 patches, 16 heads of 96: the shape the Triton kernel does not serve), and the DiT's
unmasked attention (30 heads of 128 over 4,128 tokens). MoE: the backbone's 256 experts
(H 2048, I 512, top-8) on 32 tokens, fused kernel vs the loop in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._checkout import use_checkout  # noqa: E402

use_checkout()  # the GPU machine runs this checkout uninstalled

from lladauni.model_core.kernel_choice import kernel_status  # noqa: E402
from lladauni.model_core.layers.attention import AttentionMask, choose_attention, eager_attention, get_attention_backend  # noqa: E402
from lladauni.model_core.moe import choose_moe, get_moe_backend, loop_moe  # noqa: E402


def _attention_cases(device: torch.device, small: bool) -> list[tuple[str, tuple, AttentionMask]]:
    cut = (lambda n: min(n, 64)) if small else (lambda n: n)
    S_step, Q_step = cut(1024) + 32, 32
    valid = torch.ones(2, S_step, dtype=torch.bool, device=device)
    valid[1, : S_step // 4] = False
    n_vit, n_dit = cut(4096), cut(4128)
    return [
        ("backbone_cfg_step", (2, 16, 4, Q_step, S_step, 128), AttentionMask.prefix_and_block(S_step - Q_step, Q_step, key_valid=valid, device=device)),
        ("backbone_prefill", (1, 16, 4, cut(1024), cut(1024), 128), AttentionMask.block_causal(cut(1024), 32, device=device)),
        ("vit_1024px", (1, 16, 16, n_vit, n_vit, 96), AttentionMask.full(n_vit, n_vit, device=device)),
        ("dit_1024px", (1, 30, 30, n_dit, n_dit, 128), AttentionMask.full(n_dit, n_dit, device=device)),
    ]


def attention_rows(device: torch.device, small: bool) -> list[dict]:
    rows = []
    auto = get_attention_backend("auto")
    g = torch.Generator(device=device).manual_seed(0)
    for name, (B, Hq, Hkv, Q, S, D), mask in _attention_cases(device, small):
        for dtype in (torch.float32, torch.bfloat16):
            row = {"call": name, "dtype": str(dtype).replace("torch.", ""), "shape": [B, Hq, Hkv, Q, S, D]}
            try:
                q = torch.randn(B, Hq, Q, D, device=device, generator=g).to(dtype)
                k = torch.randn(B, Hkv, S, D, device=device, generator=g).to(dtype)
                v = torch.randn(B, Hkv, S, D, device=device, generator=g).to(dtype)
                row["chosen"] = choose_attention(q, k, v, mask)[0]
                out = auto(q, k, v, mask, D**-0.5)
                ref = eager_attention(q.float(), k.float(), v.float(), mask, D**-0.5)
                row["max_abs_err_vs_eager_fp32"] = float((out.float() - ref).abs().max())
            except Exception as exc:  # report and go on: every call gets a row
                row["error"] = f"{type(exc).__name__}: {exc}"
                row["trace"] = traceback.format_exc()[-600:]
            rows.append(row)
    return rows


def moe_rows(device: torch.device, small: bool) -> list[dict]:
    E, H, I, K, T = (16, 64, 32, 4, 8) if small else (256, 2048, 512, 8, 32)
    g = torch.Generator(device=device).manual_seed(1)
    rows = []
    auto = get_moe_backend("auto")
    for dtype in (torch.float32, torch.bfloat16):
        row = {"call": "backbone_moe", "dtype": str(dtype).replace("torch.", ""), "shape": [T, E, H, I, K]}
        try:
            x = torch.randn(T, H, device=device, generator=g).to(dtype)
            gu = (torch.randn(E, 2 * I, H, device=device, generator=g) * H**-0.5).to(dtype)
            dn = (torch.randn(E, H, I, device=device, generator=g) * I**-0.5).to(dtype)
            ids = torch.randint(0, E, (T, K), device=device, generator=g)
            w = torch.rand(T, K, device=device, generator=g)
            row["chosen"] = choose_moe(x, gu, dn, ids, w)[0]
            out = auto(x, gu, dn, ids, w)
            ref = loop_moe(x.float(), gu.float(), dn.float(), ids, w)
            row["max_abs_err_vs_loop_fp32"] = float((out.float() - ref).abs().max())
            row["ref_abs_max"] = float(ref.abs().max())
            del gu, dn
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def parity_rows(device: torch.device, small: bool) -> dict:
    """fp32 parity of every fast backend at the published layer width (2 layers), and the static
    loop's captured graphs against the exact cache, token for token (bench/gpu_parity.py)."""
    from bench.gpu_parity import TOLERANCE, backend_rows, build, static_loop_rows

    try:
        model = build(small, device)
        out = {"tolerance": TOLERANCE, "backends": backend_rows(model, device, small)}
        out["static_loop"] = static_loop_rows(model, device, small)
        out["all_ok"] = all(r.get("ok") for r in out["backends"] + out["static_loop"])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return out
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-800:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, short lengths (the chooser answers sdpa/loop)")
    args = ap.parse_args()
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    t0 = time.time()
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "kernel_status": kernel_status()}
    out["attention"] = attention_rows(device, args.dry_run)
    out["moe"] = moe_rows(device, args.dry_run)
    out["parity"] = parity_rows(device, args.dry_run or device.type != "cuda")
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
