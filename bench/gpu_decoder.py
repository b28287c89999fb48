"""GPU timing of a 1024² turbo decode with the full-size decoder and random bf16 weights.

    python bench/gpu_decoder.py                 # full size, CUDA, bf16, 32x32 codes, 8 steps
    python bench/gpu_decoder.py --compile       # torch.compile the DiT forward first
    python bench/gpu_decoder.py --config tiny --device cpu --dtype float32   # dry run of the code path

Builds the published architecture (DiT dim 3840, 30 + 2 + 2 layers, SigVQ 16384 x 4096, and the
Flux VAE when diffusers is installed) straight on the device with random weights, no checkpoint,
then times SigVQ + 8 turbo DiT steps + VAE decode for a 32 x 32 code grid (1024 x 1024 pixels).
Prints one JSON object: per-step DiT time, DiT loop, VAE, total, peak memory. Target on one H200:
total <= 1.5 s (arithmetic floor about 1.0 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._checkout import use_checkout  # noqa: E402

use_checkout()  # the GPU machine runs this checkout uninstalled

from lladauni.model_core.decoder import DiTConfig, FlowRenoiseSampler, ImageDecoder, SigVQ, VAEDecoder, ZImageDiT  # noqa: E402

FLUX_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}


@torch.no_grad()
def _fill_random(module: torch.nn.Module, seed: int) -> None:
    """Random weights drawn on the module's device (a 6B model filled from the CPU takes minutes)."""
    dev = next(module.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.dim() > 1:
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
        elif name.endswith("bias"):
            p.normal_(0.0, 0.02, generator=g)
        elif "pad_token" in name:
            p.normal_(0.0, 1.0, generator=g)
        else:
            p.normal_(1.0, 0.1, generator=g)


def _build(module_fn, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        m = module_fn()
    m = m.to_empty(device=device).to(dtype)
    _fill_random(m, seed)
    return m.eval().requires_grad_(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["full", "mid", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--grid", type=int, default=32, help="codes per side (32 -> 1024 px)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT forward")
    ap.add_argument("--no-vae", action="store_true")
    args = ap.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = getattr(DiTConfig, args.config)()
    t0 = time.perf_counter()
    dit = _build(lambda: ZImageDiT(cfg), device, dtype, 0)
    sigvq = _build(lambda: SigVQ(16384, cfg.cap_feat_dim), device, dtype, 1)
    vae = None
    vae_note = None
    if not args.no_vae:
        try:
            from diffusers import AutoencoderKL

            vae_cfg = dict(FLUX_VAE)
            if args.config == "tiny":
                vae_cfg.update(block_out_channels=[16] * 4, norm_num_groups=8, layers_per_block=1)
            vae = VAEDecoder(_build(lambda: AutoencoderKL.from_config(vae_cfg), device, dtype, 2))
        except ImportError:
            vae_note = "diffusers not installed: VAE not timed"
    build_s = time.perf_counter() - t0
    if args.compile:
        dit.forward = torch.compile(dit.forward, dynamic=False)

    dec = ImageDecoder(sigvq, dit, vae, FlowRenoiseSampler(num_steps=args.steps), variant="turbo")
    codes = torch.randint(0, 16384, (args.grid * args.grid,), generator=torch.Generator().manual_seed(0))
    grid = dec._codes_grid(codes, args.grid, args.grid)

    def one() -> dict:
        step_times: list[float] = []
        last = [time.perf_counter()]

        def on_step(done: int, total: int) -> None:
            _sync(device)
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        _sync(device)
        start = time.perf_counter()
        last[0] = start
        lat = dec.sample_latents([grid], [torch.Generator().manual_seed(0)], progress=on_step)
        _sync(device)
        dit_done = time.perf_counter()
        if vae is not None:
            px = vae.decode(lat)
            _ = px.float().mean().item()
        _sync(device)
        end = time.perf_counter()
        return {"step_s": step_times, "dit_loop_s": dit_done - start, "vae_s": end - dit_done, "total_s": end - start}

    warm = one()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [one() for _ in range(args.repeats)]
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "config": args.config,
        "dtype": args.dtype,
        "compile": args.compile,
        "grid": args.grid,
        "pixels": args.grid * 32,
        "steps": args.steps,
        "dit_params": dit.num_parameters(),
        "build_s": round(build_s, 2),
        "warmup_total_s": round(warm["total_s"], 4),
        "median_step_s": round(statistics.median(s for r in runs for s in r["step_s"][1:] or r["step_s"]), 4),
        "first_step_s": round(statistics.median(r["step_s"][0] for r in runs), 4),
        "dit_loop_s": round(med("dit_loop_s"), 4),
        "vae_s": round(med("vae_s"), 4) if vae is not None else None,
        "total_s": round(med("total_s"), 4),
        "target_total_s": 1.5,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    if vae_note:
        out["note"] = vae_note
    print(json.dumps(out))


if __name__ == "__main__":
    main()
