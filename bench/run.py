"""CPU benchmarks of the foundation, measured side by side in one run and written to
bench/RESULTS.md (and bench/out/foundation.json).

    python -m bench.run            # all sections
    python -m bench.run --quick    # fewer repeats

Sections
1. Tiny backbone forward: a whole 256-token window, and a 32-token block over a 1,024-token
   cached prefix vs recomputing the 1,056-token window (the official per-step cost) with and
   without logits for every position.
2. One full-size MoE layer (hidden 2048, 256 experts, top-8, 1 shared) at the block-step shape
   (32 tokens): our ``loop`` backend vs transformers' DeepSeek-V3 MoE block on the same weights.
   This is the CPU baseline the kernels issue will beat.
3. Peak resident memory while loading a small checkpoint, relative to the model's size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from bench.timing import median_ms

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"


@torch.no_grad()
def bench_tiny_forward(repeats: int) -> dict:
    from lladauni.model_core import AttentionMask, BackboneConfig, LLaDA2Backbone

    cfg = BackboneConfig.tiny()
    model = LLaDA2Backbone(cfg).eval().requires_grad_(False)
    model.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    ids256 = torch.randint(0, cfg.vocab_size, (1, 256), generator=g)
    ids = torch.randint(0, cfg.vocab_size, (1, 1056), generator=g)
    pre = model(ids[:, :1024], return_kv=True, logits_for=0).kv
    block_mask = AttentionMask.prefix_and_block(1024, 32)
    pos = torch.arange(1024, 1056)
    res = {
        "window256_all_logits_ms": median_ms(lambda: model(ids256), repeats),
        "window256_block_logits_ms": median_ms(lambda: model(ids256, logits_for=32), repeats),
        "window1056_all_logits_ms": median_ms(lambda: model(ids), repeats),
        "window1056_block_logits_ms": median_ms(lambda: model(ids, logits_for=32), repeats),
        "block32_over_cached1024_ms": median_ms(
            lambda: model(ids[:, 1024:], position_ids=pos, mask=block_mask, past=pre), repeats
        ),
    }
    res["eager_window256_block_logits_ms"] = median_ms(
        lambda: model.set_backends(attn="eager")(ids256, logits_for=32), repeats
    )
    model.set_backends(attn="auto")
    return res


@torch.no_grad()
def bench_full_moe_layer(repeats: int, dtype: torch.dtype) -> dict:
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    from lladauni.model_core import BackboneConfig
    from lladauni.model_core.moe import SparseMoeBlock

    cfg = BackboneConfig.full()
    g = torch.Generator().manual_seed(0)
    ours = SparseMoeBlock(cfg).requires_grad_(False)
    for p in ours.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    ours.gate.expert_bias.normal_(0, 0.01, generator=g)
    ours = ours.to(dtype)
    ds_cfg = DeepseekV3Config(
        hidden_size=cfg.hidden_size, moe_intermediate_size=cfg.moe_intermediate_size,
        n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok, n_group=cfg.n_group,
        topk_group=cfg.topk_group, n_shared_experts=cfg.num_shared_experts,
        routed_scaling_factor=cfg.routed_scaling_factor, norm_topk_prob=True,
    )
    with torch.device("meta"):
        ref = DeepseekV3MoE(ds_cfg)
    ref = ref.to_empty(device="cpu").to(dtype).eval().requires_grad_(False)
    # share storage: same weights, no second copy
    ref.experts.gate_up_proj = ours.experts.gate_up_proj
    ref.experts.down_proj = ours.experts.down_proj
    ref.gate.weight = ours.gate.weight
    ref.gate.e_score_correction_bias = ours.gate.expert_bias.float()
    for n in ("gate_proj", "up_proj", "down_proj"):
        getattr(ref.shared_experts, n).weight = getattr(ours.shared_experts, n).weight
    out = {}
    for T in (32, 64):
        x = torch.randn(1, T, cfg.hidden_size, generator=g).to(dtype)
        diff = (ours(x).float() - ref(x).float()).abs().max().item()
        t_ours = median_ms(lambda: ours(x), repeats)
        t_ref = median_ms(lambda: ref(x), repeats)
        out[f"T{T}"] = {"ours_ms": t_ours, "transformers_deepseek_v3_ms": t_ref, "speedup": t_ref / t_ours, "max_abs_diff": diff}
    n_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    out["layer_weight_bytes"] = n_bytes
    return out


_MEM_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from lladauni.model_core import load_backbone
    def status_kb(key):
        with open('/proc/self/status') as fh:
            for line in fh:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    # reset the peak-RSS mark to the current RSS, so VmHWM measures the load alone
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')
    before = status_kb('VmRSS')
    m = load_backbone(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
    peak = status_kb('VmHWM')
    after = status_kb('VmRSS')
    model_bytes = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    print(json.dumps({"rss_before_kb": before, "peak_kb": peak, "rss_after_kb": after, "model_bytes": model_bytes}))
    """
)


def bench_load_memory() -> dict:
    from lladauni.model_core import BackboneConfig
    from lladauni.model_core.testing import make_tiny_checkpoint

    cfg = BackboneConfig.tiny().replace(hidden_size=512, intermediate_size=1024, num_hidden_layers=6, num_experts=64,
                                        n_group=8, topk_group=4, num_experts_per_tok=8, moe_intermediate_size=128,
                                        num_attention_heads=8, num_key_value_heads=2, head_dim=64)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "small", seed=0, config=cfg, num_shards=4, with_image_tokenizer=False, with_decoder=False)
        file_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        for dtype in ("bfloat16", "float32"):
            r = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(ckpt), dtype], capture_output=True, text=True,
                               check=True, cwd=ROOT.parent)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            growth = (m["peak_kb"] - m["rss_before_kb"]) * 1024
            res[dtype] = {
                "checkpoint_file_bytes": file_bytes,
                "model_bytes": m["model_bytes"],
                "peak_growth_bytes": growth,
                "peak_over_model": growth / m["model_bytes"],
            }
    return res


def _fmt_md(results: dict) -> str:
    t = results["tiny_forward"]
    m = results["full_moe_layer"]
    mem = results["load_memory"]
    lines = [
        "## Foundation: tiny backbone forward (CPU, fp32, batch 1)",
        "",
        "| case | ms |",
        "|---|---|",
        f"| 256-token window, logits for all positions | {t['window256_all_logits_ms']:.1f} |",
        f"| 256-token window, logits for the last block only | {t['window256_block_logits_ms']:.1f} |",
        f"| 256-token window, last-block logits, eager attention | {t['eager_window256_block_logits_ms']:.1f} |",
        f"| 1,056-token window, logits for all positions (what the official code computes per step) | {t['window1056_all_logits_ms']:.1f} |",
        f"| 1,056-token window, logits for the last block only | {t['window1056_block_logits_ms']:.1f} |",
        f"| 32-token block over a cached 1,024-token prefix | {t['block32_over_cached1024_ms']:.1f} |",
        "",
        f"Logits for the active block only: {t['window1056_all_logits_ms'] / t['window1056_block_logits_ms']:.1f}x "
        f"faster than the whole 1,056 window; a step over the cached prefix is a further "
        f"{t['window1056_block_logits_ms'] / t['block32_over_cached1024_ms']:.1f}x "
        f"({t['window1056_all_logits_ms'] / t['block32_over_cached1024_ms']:.1f}x in all).",
        "",
        "## Foundation: one full-size MoE layer on CPU (hidden 2048, 256 experts, top-8, shared expert)",
        "",
        "Our `loop` backend vs transformers' DeepSeek-V3 MoE block on the same weights (the same routing).",
        f"Layer weights: {m['bf16']['layer_weight_bytes'] / 2**30:.2f} GiB in bf16.",
        "",
        "| dtype | tokens | ours ms | transformers ms | ours is faster by | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for dname in ("fp32", "bf16"):
        for T in ("T32", "T64"):
            r = m[dname][T]
            lines.append(
                f"| {dname} | {T[1:]} | {r['ours_ms']:.1f} | {r['transformers_deepseek_v3_ms']:.1f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |"
            )
    lines += [
        "",
        "## Foundation: peak memory while loading (6-layer, 64-expert checkpoint; bf16 files)",
        "",
        "| load dtype | file bytes | model bytes | peak RSS growth | peak / model |",
        "|---|---|---|---|---|",
    ]
    for dname, r in mem.items():
        lines.append(
            f"| {dname} | {r['checkpoint_file_bytes'] / 2**20:.0f} MiB | {r['model_bytes'] / 2**20:.0f} MiB | "
            f"{r['peak_growth_bytes'] / 2**20:.0f} MiB | {r['peak_over_model']:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


SECTIONS = ("foundation", "generation", "image_tokenizer", "decoder", "agent", "tools")


def _foundation(quick: bool) -> tuple[dict, str]:
    repeats = 3 if quick else 7
    results = {}
    print("tiny forward ...", flush=True)
    results["tiny_forward"] = bench_tiny_forward(repeats)
    print("full-size MoE layer ...", flush=True)
    results["full_moe_layer"] = {
        "fp32": bench_full_moe_layer(repeats, torch.float32),
        "bf16": bench_full_moe_layer(repeats, torch.bfloat16),
    }
    print("load memory ...", flush=True)
    results["load_memory"] = bench_load_memory()
    return results, _fmt_md(results)


def _section(name: str, quick: bool) -> tuple[dict, str]:
    if name == "foundation":
        return _foundation(quick)
    import importlib

    module = importlib.import_module(f"bench.bench_{name}")
    return module.run(quick)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CPU benchmarks; each section's figures come from one run.")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, help="run these sections; others keep their last figures")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    for name in args.only or SECTIONS:
        print(f"== {name}", flush=True)
        try:
            data, md = _section(name, args.quick)
        except ModuleNotFoundError as exc:
            print(f"skipping {name}: {exc}")
            continue
        stamp = f"_Measured {dt.date.today().isoformat()} on {machine}{' (quick)' if args.quick else ''}._\n\n"
        (OUT / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
        (OUT / f"{name}.md").write_text(md.rstrip() + "\n\n" + stamp)
        print(md)
    from bench._results import TITLE, update_sections

    # replace this run's sections in place; every other section (GPU, mutation, shapes) is kept
    fresh = [(OUT / f"{name}.md").read_text() for name in (args.only or SECTIONS) if (OUT / f"{name}.md").exists()]
    update_sections(fresh, preamble=TITLE + "\n\nCPU figures from `make bench` (bench/run.py); each section's ratios "
                    "compare numbers from one run of that section.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
