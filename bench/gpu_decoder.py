"""GPU timing of a 1024² turbo decode with the full-size decoder and random bf16 weights.

    python bench/gpu_decoder.py                 # full size, CUDA, bf16, 32x32 codes, 8 steps: eager, then compiled
    python bench/gpu_decoder.py --mode compiled --compile-mode default   # one mode, a quicker compile
    python bench/gpu_decoder.py --dry-run       # tiny config on CPU, eager (= --config tiny --device cpu ...)

Builds the published architecture (DiT dim 3840, 30 + 2 + 2 layers, SigVQ 16384 x 4096, and the
Flux VAE when diffusers is installed) straight on the device with random weights, no checkpoint,
then times SigVQ + 8 turbo DiT steps + VAE decode for a 32 x 32 code grid (1024 x 1024 pixels).
``--mode auto`` (the default) times what ``ImageDecoder`` does by default and, on CUDA, eager
beside it: eager then compiled (DiT step and VAE through torch.compile, mode
inductor default unless --compile-mode says otherwise); on CPU eager only. The first
(warm-up) decode of the compiled run includes compiling; ``warmup_total_s`` shows it.
Prints one JSON object: the default mode's figures at the top level (per-step DiT time, DiT
loop, VAE, total, peak memory), every mode under ``runs``, and ``compiled_speedup`` (eager total /
compiled total) when both ran. Target on one H200: total <= 1.5 s (arithmetic floor about 1.0 s).
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
from lladauni.model_core.decoder.compiling import COMPILE_MODES, compile_wanted  # noqa: E402

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


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["full", "mid", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--grid", type=int, default=32, help="codes per side (32 -> 1024 px)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--mode", choices=["auto", "both", "eager", "compiled"], default="auto",
        help="auto: eager then compiled on CUDA, eager on CPU (the ImageDecoder defaults)",
    )
    ap.add_argument("--compile-mode", choices=COMPILE_MODES, default=None, help="torch.compile mode (default: the decoder's)")
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny config on CPU in fp32, grid 4, 1 step, 1 repeat, no VAE")
    args = ap.parse_args()
    if args.dry_run:
        args.config, args.device, args.dtype, args.grid, args.steps, args.repeats, args.no_vae = "tiny", "cpu", "float32", 4, 1, 1, True
    return args


def build_decoder(config: str, device: torch.device, dtype: torch.dtype, steps: int = 8, *,
                  vae: bool = True) -> tuple[ImageDecoder, float, str | None]:
    """The decoder at ``config`` ("full", "mid", "tiny") with random weights on ``device``, eager
    (``set_compile`` turns compiling on): (decoder, build seconds, a note when the VAE is missing)."""
    cfg = getattr(DiTConfig, config)()
    t0 = time.perf_counter()
    dit = _build(lambda: ZImageDiT(cfg), device, dtype, 0)
    sigvq = _build(lambda: SigVQ(16384, cfg.cap_feat_dim), device, dtype, 1)
    vae_dec, vae_note = None, None
    if vae:
        try:
            from diffusers import AutoencoderKL

            vae_cfg = dict(FLUX_VAE)
            if config == "tiny":
                vae_cfg.update(block_out_channels=[16] * 4, norm_num_groups=8, layers_per_block=1)
            vae_dec = VAEDecoder(_build(lambda: AutoencoderKL.from_config(vae_cfg), device, dtype, 2))
        except ImportError:
            vae_note = "diffusers not installed: VAE not timed"
    dec = ImageDecoder(sigvq, dit, vae_dec, FlowRenoiseSampler(num_steps=steps), variant="turbo", compile=False)
    return dec, time.perf_counter() - t0, vae_note


def decode_once(dec: ImageDecoder, grid: torch.Tensor, device: torch.device) -> dict:
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
    if dec.vae is not None:
        px = dec.vae.decode(lat)
        _ = px.float().mean().item()
    _sync(device)
    end = time.perf_counter()
    return {"step_s": step_times, "dit_loop_s": dit_done - start, "vae_s": end - dit_done, "total_s": end - start}


def _time_mode(dec: ImageDecoder, grid: torch.Tensor, device: torch.device, compiled: bool, args: argparse.Namespace) -> dict:
    dec.set_compile(compiled, args.compile_mode)
    warm = decode_once(dec, grid, device)  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [decode_once(dec, grid, device) for _ in range(args.repeats)]
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    out = {
        "compiled": dec.compiled,  # False after a fallback to eager (see compile_error)
        "compile_mode": dec.dit.compiled_core.mode if dec.dit.compiled_core is not None else None,
        "warmup_total_s": round(warm["total_s"], 4),
        "median_step_s": round(statistics.median(s for r in runs for s in r["step_s"][1:] or r["step_s"]), 4),
        "first_step_s": round(statistics.median(r["step_s"][0] for r in runs), 4),
        "dit_loop_s": round(med("dit_loop_s"), 4),
        "vae_s": round(med("vae_s"), 4) if dec.vae is not None else None,
        "total_s": round(med("total_s"), 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    if compiled and dec.dit.compiled_core is not None and dec.dit.compiled_core.error:
        out["compile_error"] = dec.dit.compiled_core.error
    return out


def main() -> None:
    args = _args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    default_compiled = compile_wanted(None, device)
    modes = {"auto": ["eager", "compiled"] if default_compiled else ["eager"], "both": ["eager", "compiled"]}.get(args.mode, [args.mode])
    dec, build_s, vae_note = build_decoder(args.config, device, dtype, args.steps, vae=not args.no_vae)
    codes = torch.randint(0, 16384, (args.grid * args.grid,), generator=torch.Generator().manual_seed(0))
    grid = dec._codes_grid(codes, args.grid, args.grid)
    runs = {m: _time_mode(dec, grid, device, m == "compiled", args) for m in modes}
    top = runs["compiled" if default_compiled and "compiled" in runs else modes[-1]]
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "config": args.config,
        "dtype": args.dtype,
        "grid": args.grid,
        "pixels": args.grid * 32,
        "steps": args.steps,
        "dit_params": dec.dit.num_parameters(),
        "build_s": round(build_s, 2),
        **top,
        "runs": runs,
        "target_total_s": 1.5,
        "torch": torch.__version__,
    }
    if "eager" in runs and "compiled" in runs:
        out["compiled_speedup"] = round(runs["eager"]["total_s"] / runs["compiled"]["total_s"], 3)
    if vae_note:
        out["note"] = vae_note
    print(json.dumps(out))


if __name__ == "__main__":
    main()
