"""Kernel and block-step benchmarks for one GPU, printed and written as JSON (run by gpu.sh).

    python bench/gpu_kernels.py --section ceilings|kernels|backbone|compile [--out DIR]
    python bench/gpu_kernels.py --section all --dry-run   # CPU: tiny shapes through the interpreter

Sections:
- ceilings: measured copy bandwidth (GB/s) and dense bf16 GEMM TFLOP/s;
- kernels: each kernel's GB/s and TFLOP/s against the ceilings (kernels/<op>/bench.py);
- backbone: the full-size random-weight backbone, one block step (prefix 1,024 cached, block 32,
  logits for the block) at batch 1 and batch 2 (CFG, padded null prompt): eager PyTorch
  (sdpa + loop), our kernels, our kernels in a CUDA graph, and with FP8 experts;
- compile: the same step with torch.compile on the eager backends (slow to build; own process).
Each case is wrapped: a failure is recorded as {"error": ...} and the rest goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._checkout import use_checkout  # noqa: E402

use_checkout()  # the GPU machine runs this checkout uninstalled

import torch  # noqa: E402

RESULTS: dict[str, Any] = {}


def guarded(name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # one failing case must not stop the script
        traceback.print_exc()
        out = {"error": f"{type(exc).__name__}: {exc}"[:800]}
    RESULTS[name] = out
    print(f"[{name}] {time.perf_counter() - t0:.1f}s: {json.dumps(out, default=str)[:2000]}", flush=True)
    return out


def env_info() -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info["device"] = "cpu"
    return info


def measure_ceilings(device: torch.device, dry: bool) -> dict[str, float]:
    from lladauni.kernels._bench import time_ms

    n = (1 << 20) if dry else (1 << 30)  # bytes per buffer
    a = torch.empty(n // 2, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), device, iters=3 if dry else 20)
    gbps = 2 * n / (ms * 1e-3) / 1e9
    m = 256 if dry else 8192
    x = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    y = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    ms = time_ms(lambda: x @ y, device, iters=3 if dry else 20)
    return {"copy_gbps": round(gbps, 1), "bf16_gemm_tflops": round(2 * m**3 / (ms * 1e-3) / 1e12, 1),
            "quoted_gbps": 4300.0, "quoted_tflops": 790.0}


def _ceilings() -> dict[str, float]:
    c = RESULTS.get("ceilings") or {}
    if "copy_gbps" in c and torch.cuda.is_available():
        return {"gbps": c["copy_gbps"], "tflops": c["bf16_gemm_tflops"]}
    return {"gbps": 4300.0, "tflops": 790.0}


# ------------------------------------------------------------------------------ backbone
def build_backbone(config, device: torch.device, dtype: torch.dtype):
    """Random weights made directly on the device (no fp32 host copy of 16B parameters)."""
    from lladauni.model_core.backbone import LLaDA2Backbone
    from lladauni.model_core.moe import Router

    with torch.device("meta"):
        model = LLaDA2Backbone(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, config.initializer_range, generator=g)
        for mod in model.modules():
            if isinstance(mod, Router):
                mod.expert_bias = torch.randn(config.num_experts, device=device, generator=g) * 0.05
    return model.eval()


def use_fp8_experts(model) -> None:
    """Swap every MoE layer's experts for FP8 (e4m3, 128x128 block scales) run by fused_moe.
    Bench-only wiring: model_core has no FP8 expert storage yet."""
    from lladauni.kernels.moe import fused_moe, quantize_experts
    from lladauni.model_core.moe import SparseMoeBlock

    for layer in model.model.layers:
        mlp = layer.mlp
        if not isinstance(mlp, SparseMoeBlock):
            continue
        gq, gs, dq, ds = quantize_experts(mlp.experts.gate_up_proj.data, mlp.experts.down_proj.data)
        mlp.experts.gate_up_proj = torch.nn.Parameter(gq, requires_grad=False)
        mlp.experts.down_proj = torch.nn.Parameter(dq, requires_grad=False)
        mlp.backend = lambda x, gu, dn, ids, w, gs=gs, ds=ds: fused_moe(x, gu, dn, ids, w, gs, ds)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def step_inputs(config, B: int, prefix: int, block: int, device: torch.device, dtype: torch.dtype):
    from lladauni.model_core.backbone import KVCache
    from lladauni.model_core.layers.attention import AttentionMask

    L, Hkv, D = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    g = torch.Generator(device=device).manual_seed(1)
    past = KVCache([torch.randn(B, Hkv, prefix, D, device=device, dtype=dtype, generator=g) for _ in range(L)],
                   [torch.randn(B, Hkv, prefix, D, device=device, dtype=dtype, generator=g) for _ in range(L)])
    ids = torch.randint(0, config.vocab_size, (B, block), device=device, generator=g)
    pos = torch.arange(prefix, prefix + block, device=device)
    valid = None
    if B == 2:  # CFG: the null prompt is left-padded
        valid = torch.ones(B, prefix + block, dtype=torch.bool, device=device)
        valid[1, : prefix // 2] = False
    mask = AttentionMask.prefix_and_block(prefix, block, key_valid=valid, device=device)
    return ids, pos, mask, past


def bench_backbone(device: torch.device, dry: bool, compile_only: bool = False) -> None:
    from lladauni.kernels._bench import time_ms
    from lladauni.model_core.config import BackboneConfig

    config = BackboneConfig.tiny() if dry else BackboneConfig.full()
    prefix, block = (64, 32) if dry else (1024, 32)
    iters = 1 if dry else 10
    dtype = torch.bfloat16
    box: dict[str, Any] = {}
    built = guarded("backbone_build", lambda: _timed_build(config, device, dtype, box))
    if "error" in built:
        return
    model = box["model"]
    steps = {}
    for B in (1, 2):
        ids, pos, mask, past = step_inputs(config, B, prefix, block, device, dtype)

        def step(ids=ids, pos=pos, mask=mask, past=past):
            with torch.no_grad():
                return model(ids, pos, mask, past=past, check_inputs=False).logits

        steps[B] = step
    if compile_only:
        model.set_backends(attn="sdpa", moe="loop")
        compiled = torch.compile(model)
        for B in (1, 2):
            ids, pos, mask, past = step_inputs(config, B, prefix, block, device, dtype)

            def cstep(ids=ids, pos=pos, mask=mask, past=past):
                with torch.no_grad():
                    return compiled(ids, pos, mask, past=past, check_inputs=False).logits

            guarded(f"step_B{B}_torch_compile", lambda: _step_row(time_ms(cstep, device, iters=iters, warmup=2)))
        return
    for B in (1, 2):
        model.set_backends(attn="sdpa", moe="loop")
        guarded(f"step_B{B}_eager_torch", lambda: _step_row(time_ms(steps[B], device, iters=max(1, iters // 2))))
        model.set_backends(attn="triton", moe="triton")
        guarded(f"step_B{B}_kernels", lambda: _step_row(time_ms(steps[B], device, iters=iters)))
        if device.type == "cuda":
            guarded(f"step_B{B}_kernels_cuda_graph", lambda: _step_row(time_ms(steps[B], device, iters=iters, graph=True)))
            guarded(f"step_B{B}_parity_kernels_vs_eager", lambda: _parity(model, steps[B]))
    guarded("fp8_convert", lambda: (use_fp8_experts(model), {"ok": True})[1])
    for B in (1, 2):
        guarded(f"step_B{B}_kernels_fp8" + ("_cuda_graph" if device.type == "cuda" else ""),
                lambda: _step_row(time_ms(steps[B], device, iters=iters, graph=device.type == "cuda")))


def _timed_build(config, device, dtype, box: dict) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = box["model"] = build_backbone(config, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": round(time.perf_counter() - t0, 1),
            "parameters": model.num_parameters(), "active": model.num_parameters(active=True)}


def _step_row(ms: float) -> dict[str, Any]:
    return {"ms": round(ms, 3), "roofline_ms_bf16_b1": 4.34, "roofline_ms_bf16_b2": 5.82}


def _parity(model, step) -> dict[str, Any]:
    model.set_backends(attn="sdpa", moe="loop")
    ref = step().float()
    model.set_backends(attn="triton", moe="triton")
    out = step().float()
    return {"max_abs_logit_diff": float((out - ref).abs().max()), "ref_max_abs": float(ref.abs().max()),
            "argmax_agree": float((out.argmax(-1) == ref.argmax(-1)).float().mean())}


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--section", choices=["all", "ceilings", "kernels", "backbone", "compile"], default="all")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU via TRITON_INTERPRET=1 (exercises the Python paths)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    if args.dry_run and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dry = args.dry_run or device.type != "cuda"
    RESULTS["env"] = env_info()
    RESULTS["dry_run"] = dry
    sections = ["ceilings", "kernels", "backbone"] if args.section == "all" else [args.section]
    if "ceilings" in sections or args.section in ("kernels",):
        guarded("ceilings", lambda: measure_ceilings(device, dry))
    if "kernels" in sections:
        from lladauni.kernels.attention import bench as attn_bench
        from lladauni.kernels.moe import bench as moe_bench
        from lladauni.kernels.norm import bench as norm_bench

        c, it = _ceilings(), (1 if dry else 20)
        from lladauni.model_core.moe import loop_moe

        guarded("kernel_moe", lambda: moe_bench.run(device, (32,) if dry else (32, 64), tiny=dry, ceilings=c, iters=it, loop=loop_moe))
        guarded("kernel_attention", lambda: attn_bench.run(device, tiny=dry, ceilings=c, iters=it))
        guarded("kernel_norm", lambda: norm_bench.run(device, (32,) if dry else (32, 64), tiny=dry, ceilings=c, iters=it))
    if "backbone" in sections:
        guarded("backbone", lambda: (bench_backbone(device, dry), {"ok": True})[1])
    if "compile" in sections:
        guarded("compile", lambda: (bench_backbone(device, dry, compile_only=True), {"ok": True})[1])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"kernels_{args.section}.json"
    path.write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
