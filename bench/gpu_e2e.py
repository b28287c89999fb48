"""The whole pipeline on one GPU, end to end, at the published shapes with random weights.

    python bench/gpu_e2e.py [--budget-s 240] [--out DIR]   # on the GPU machine (run by gpu.sh)
    python bench/gpu_e2e.py --dry-run                     # CPU: tiny configs, tiny lengths

Builds the backbone (16.3B, bf16), the image tokenizer (SigLIP-VQ, 1.2B), the decoder (SigVQ + the
6B DiT + the Flux VAE when diffusers is installed) straight on the device from the published
configs (no checkpoint), then times what users run, each as one row with its floor and the peak
memory of the row:

- ``answer_256``: a 256-token answer after a 1,100-token prompt (32 steps per 32-token block),
  static loop (the default on CUDA), then the exact cache side by side (the loop before issue 21);
- ``t2i_1024`` (batch 1) and ``t2i_1024_cfg`` (CFG batch of 2): 1,024 image tokens, 8 steps per
  block, then the turbo decode of the 32x32 grid (SigVQ + 8 DiT steps + VAE), and the total;
- ``understand_1024``: a 1024² image through the tokenizer ("understand" resize) and a 256-token
  answer about it;
- ``edit_1024``: a 1024² source ("edit" crop, 1,024 codes), editing CFG (3 rows), decode;
- ``chat_512``: a 512-token answer after a 64-token prompt;
- ``answer_256_triton_attention``: ``answer_256`` with the Triton attention kernel forced (``auto``
  runs SDPA for static-cache steps, measured faster at that shape in isolation);
- the same answer and text-to-image rows with FP8 experts, and an answer with experts streamed
  from host memory (``--offload``; slow by nature: every forward reads every expert over PCIe).

Random weights make the answers noise, so text runs with ``eos_early_stop`` off (every token is
generated, as a long real answer would be) and guidance scales are the official defaults. The
floor of a backbone row is its forwards times the block-step roofline (4.34 ms at batch 1, 5.82 ms
at batch 2, 6.9 ms at batch 3: bytes of the weights a step reads over the measured copy
bandwidth); a decode's floor is 1.0 s (its GEMM FLOPs over the measured peak). Every row is
guarded: a failure is recorded as {"error": ...} and the next row runs; rows that would start
past ``--budget-s`` are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._checkout import use_checkout  # noqa: E402

use_checkout()  # the GPU machine runs this checkout uninstalled

import torch  # noqa: E402

# Published special ids (tokenizer_config.json of the checkpoint) and the image-token offset.
MASK_ID, EOS_ID = 156895, 156892
STEP_FLOOR_MS = {1: 4.34, 2: 5.82, 3: 6.9}
DECODE_FLOOR_S = 1.0

RESULTS: dict[str, Any] = {}
START = time.perf_counter()


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - START)


def row(name: str, fn: Callable[[], dict], budget: Budget, need_s: float) -> Optional[dict]:
    """Run one row unless fewer than ``need_s`` seconds of the budget are left."""
    if budget.left() < need_s:
        RESULTS[name] = {"skipped": f"budget: {budget.left():.0f}s left, row needs ~{need_s:.0f}s"}
        print(f"[{name}] skipped", flush=True)
        return None
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        out = fn()
        if torch.cuda.is_available():
            out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except Exception as exc:  # one failing row must not stop the others
        traceback.print_exc()
        out = {"error": f"{type(exc).__name__}: {exc}"[:800]}
    out["row_wall_s"] = round(time.perf_counter() - t0, 1)
    RESULTS[name] = out
    print(f"[{name}] {json.dumps(out, default=str)[:1500]}", flush=True)
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ building
def build_models(dry: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from bench.gpu_decoder import build_decoder
    from bench.gpu_kernels import build_backbone
    from lladauni.model_core.config import BackboneConfig
    from lladauni.model_core.generation import BlockDiffusionSampler
    from lladauni.model_core.image_config import ImageTokenizerConfig, PreprocessorConfig
    from lladauni.model_core.image_tokenizer import ImageTokenizer, SigLIPVQ

    t0 = time.perf_counter()
    backbone = build_backbone(BackboneConfig.tiny() if dry else BackboneConfig.full(), device, dtype)
    sampler = BlockDiffusionSampler(backbone, mask_id=MASK_ID, eos_id=EOS_ID)
    with torch.device("meta"):
        net = SigLIPVQ(ImageTokenizerConfig.tiny() if dry else ImageTokenizerConfig.full())
    net = net.to_empty(device=device).to(dtype)
    g = torch.Generator(device=device).manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02, generator=g)
    tokenizer = ImageTokenizer(net.eval().requires_grad_(False), PreprocessorConfig(),
                               image_token_offset=backbone.config.image_token_offset)
    decoder, _, vae_note = build_decoder("tiny" if dry else "full", device, dtype, 1 if dry else 8)
    decoder.set_compile()  # the default: compiled on CUDA, eager elsewhere
    sync()
    return {"backbone": backbone, "sampler": sampler, "tokenizer": tokenizer, "decoder": decoder,
            "build_s": round(time.perf_counter() - t0, 1), "vae_note": vae_note}


# ------------------------------------------------------------------------------ pieces
def text_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 150000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def sampler_config(gen: int, *, image: bool, cache: str = "auto", cfg=None):
    from lladauni.model_core.generation import SamplerConfig

    if image:
        return SamplerConfig(gen_length=gen, block_length=32, steps=8, image_only=True, cfg=cfg, cache=cache)
    return SamplerConfig(gen_length=gen, block_length=32, steps=32, eos_early_stop=False, cache=cache)


def generate_timed(sampler, prompt: list[int], config, *, warm: bool = True) -> dict[str, Any]:
    """One generation, timed; first a short run of the same shape (same static-cache capacity and
    rows), which captures the graphs, so the timed run is the steady state a server sees."""
    import dataclasses

    if warm:
        short = 2 * config.block_length
        pad = text_ids(max(config.gen_length - short, 0), 99)
        sampler.generate(prompt + pad, dataclasses.replace(config, gen_length=min(short, config.gen_length)))
    sync()
    t0 = time.perf_counter()
    res = sampler.generate(prompt, config)
    sync()
    s = time.perf_counter() - t0
    rows = 1 if config.cfg is None else 1 + len(config.cfg.null_prompts)
    floor = res.forwards * STEP_FLOOR_MS[rows] / 1e3
    return {"backbone_s": round(s, 3), "forwards": res.forwards, "ms_per_forward": round(1e3 * s / res.forwards, 2),
            "floor_s": round(floor, 3), "x_floor": round(s / floor, 2), "tokens": int(res.generated.shape[0]),
            "tokens_per_s": round(res.generated.shape[0] / s, 1), "cache": config.cache, "_result": res}


def decode_timed(decoder, ids: torch.Tensor, offset: int, grid: int) -> dict[str, Any]:
    """SigVQ + DiT steps + VAE (when there is one) on the generated codes."""
    from bench.gpu_decoder import decode_once

    device = next(decoder.dit.parameters()).device
    codes = (ids.to(device) - offset).clamp(0, 16383).view(grid, grid)
    t = decode_once(decoder, codes, device)
    out = {"decode_s": round(t["total_s"], 3), "decode_dit_s": round(t["dit_loop_s"], 3), "decode_floor_s": DECODE_FLOOR_S}
    if decoder.vae is None:
        out["decode_note"] = "no VAE (diffusers missing): decode_s is SigVQ + DiT only"
    return out


def random_image(size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)).resize((size, size))


def image_prompt(tokenizer, image, purpose: str, offset: int, before: int, after: int) -> tuple[list[int], dict]:
    sync()
    t0 = time.perf_counter()
    tokens = tokenizer.encode(image, purpose=purpose)
    sync()
    ids = text_ids(before, 5) + (tokens.codes + offset).tolist() + text_ids(after, 6)
    return ids, {"image_tokens": tokens.num_tokens, "tokenizer_s": round(time.perf_counter() - t0, 3)}


def strip(out: dict) -> dict:
    return {k: v for k, v in out.items() if not k.startswith("_")}


# ------------------------------------------------------------------------------ rows
def run_rows(m: dict[str, Any], dry: bool, budget: Budget, offload: bool) -> None:
    from lladauni.model_core.generation import CFGSpec

    sampler, tokenizer, decoder = m["sampler"], m["tokenizer"], m["decoder"]
    offset = m["backbone"].config.image_token_offset
    n_img, grid, size = (64, 8, 128) if dry else (1024, 32, 1024)
    ans, prompt_len = (64, 40) if dry else (256, 1100)
    cfg = CFGSpec("simple", null_ids=text_ids(12, 7), scale=4.0)

    def answer(cache: str) -> dict:
        return strip(generate_timed(sampler, text_ids(prompt_len, 1), sampler_config(ans, image=False, cache=cache)))

    def t2i(guidance) -> dict:
        out = generate_timed(sampler, text_ids(96 if not dry else 20, 2), sampler_config(n_img, image=True, cfg=guidance))
        out.update(decode_timed(decoder, out["_result"].generated, offset, grid))
        out["total_s"] = round(out["backbone_s"] + out["decode_s"], 3)
        return strip(out)

    def understand() -> dict:
        ids, info = image_prompt(tokenizer, random_image(size), "understand", offset, 20, 12)
        out = generate_timed(sampler, ids, sampler_config(ans, image=False))
        out.update(info, total_s=round(out["backbone_s"] + info["tokenizer_s"], 3))
        return strip(out)

    def edit() -> dict:
        ids, info = image_prompt(tokenizer, random_image(size), "edit", offset, 30, 20)
        no_text = ids[: 30 + info["image_tokens"]]  # the source image without the instruction
        no_image = ids[:30] + ids[30 + info["image_tokens"]:]
        guidance = CFGSpec("editing", null_ids=no_text, null_image_ids=no_image, text_scale=4.0, image_scale=1.5)
        out = generate_timed(sampler, ids, sampler_config(n_img, image=True, cfg=guidance))
        out.update(info)
        out.update(decode_timed(decoder, out["_result"].generated, offset, grid))
        out["total_s"] = round(out["backbone_s"] + out["decode_s"] + info["tokenizer_s"], 3)
        return strip(out)

    def chat() -> dict:
        return strip(generate_timed(sampler, text_ids(64, 3), sampler_config(128 if dry else 512, image=False)))

    heavy = 1 if dry else 25
    row("answer_256", lambda: answer("auto"), budget, heavy)
    row("answer_256_exact_cache", lambda: answer("exact"), budget, 2 * heavy)
    # the first decode compiles the DiT and the VAE (the default on CUDA): out of the timed rows
    row("decoder_warmup", lambda: decode_timed(decoder, torch.full((n_img,), offset), offset, grid), budget, heavy)
    row("t2i_1024_cfg", lambda: t2i(cfg), budget, heavy)
    row("t2i_1024", lambda: t2i(None), budget, heavy)
    row("understand_1024", understand, budget, heavy)
    row("edit_1024", edit, budget, heavy)
    row("chat_512", chat, budget, heavy)

    def forced_triton_attention() -> dict:  # auto runs SDPA for static steps: the measured reason
        m["backbone"].set_backends(attn="triton")
        try:
            return answer("auto")
        finally:
            m["backbone"].set_backends(attn="auto")

    row("answer_256_triton_attention", forced_triton_attention, budget, heavy)
    fp8_rows(m, budget, heavy, answer, t2i, cfg)
    if offload:
        offload_row(m, budget, dry, prompt_len)


def fp8_rows(m: dict[str, Any], budget: Budget, heavy: float, answer, t2i, cfg) -> None:
    from lladauni.model_core.expert_storage import backbone_memory, quantize_experts_fp8

    def convert() -> dict:
        before = backbone_memory(m["backbone"])["device_total"]
        quantize_experts_fp8(m["backbone"])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"weights_gib_bf16": round(before / 2**30, 2),
                "weights_gib_fp8": round(backbone_memory(m["backbone"])["device_total"] / 2**30, 2)}

    if row("fp8_convert", convert, budget, heavy) is None:
        return
    row("answer_256_fp8", lambda: answer("auto"), budget, heavy)
    row("t2i_1024_cfg_fp8", lambda: t2i(cfg), budget, heavy)


def offload_row(m: dict[str, Any], budget: Budget, dry: bool, prompt_len: int) -> None:
    from lladauni.model_core.expert_storage import backbone_memory, offload_experts

    def run() -> dict:
        device = next(m["backbone"].parameters()).device
        offload_experts(m["backbone"], device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        out = strip(generate_timed(m["sampler"], text_ids(prompt_len, 1), sampler_config(32, image=False), warm=False))
        mem = backbone_memory(m["backbone"])
        out.update(weights_on_device_gib=round(mem["device_total"] / 2**30, 2),
                   weights_in_host_gib=round(mem["offloaded"] / 2**30, 2))
        return out

    row("answer_32_expert_offload", run, budget, 60)


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny configs and lengths on the CPU")
    ap.add_argument("--budget-s", type=float, default=240.0, help="start no row after this many seconds")
    ap.add_argument("--offload", action="store_true", help="also time the expert-offload mode (slow)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    dry = args.dry_run or device.type != "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    RESULTS["env"] = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    budget = Budget(args.budget_s)
    box: dict[str, Any] = {}

    def build() -> dict:
        box.update(build_models(dry, device, dtype))
        return {"build_s": box["build_s"], "vae_note": box["vae_note"]}

    built = row("build", build, budget, 0)
    with torch.no_grad():
        if built is not None and "error" not in built:
            run_rows(box, dry, budget, args.offload)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "e2e.json"
    path.write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")
    print(json.dumps(RESULTS, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
