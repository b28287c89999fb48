"""CPU benchmark of the diffusion decoder (issue 4).

    python -m bench.bench_decoder [--quick]

``run(quick)`` returns (figures, markdown section): per-step DiT time and whole decode time for
the tiny and a mid-size DiT (``DiTConfig.mid()``: dim 512, 6 layers), normal (Euler + CFG, two
branches per step) vs turbo (re-noising, one branch), and the memory a resident decoder holds.
The mid-size model is random and not written to disk; the tiny one is a full checkpoint in the
published layout (SigVQ + DiT + VAE) decoded through ``ImageDecoder``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bench.timing import median_ms

from lladauni.model_core.decoder import DiTConfig, FlowEulerSampler, FlowRenoiseSampler, ImageDecoder, ZImageDiT
from lladauni.model_core.decoder.testing import write_tiny_decoder


def _resident_mib(dec: ImageDecoder) -> dict:
    def mib(mod) -> float:
        return sum(p.numel() * p.element_size() for p in mod.parameters()) / 2**20

    out = {"dit_mib": mib(dec.dit), "sigvq_mib": mib(dec.sigvq)}
    out["vae_mib"] = mib(dec.vae.vae) if dec.vae is not None else 0.0
    out["total_mib"] = out["dit_mib"] + out["sigvq_mib"] + out["vae_mib"]
    return out


@torch.no_grad()
def _dit_step_ms(config: DiTConfig, h: int, w: int, repeats: int) -> dict:
    """One DiT forward for an h x w code grid, batch 1 (turbo step) and batch 2 (normal step, CFG)."""
    model = ZImageDiT(config).eval()
    model.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    res = {}
    for name, b in (("turbo_step_ms", 1), ("normal_step_ms", 2)):
        x = torch.randn(b, config.in_channels, 4 * h, 4 * w, generator=g)
        feats = torch.randn(b, 4 * h * w, config.cap_feat_dim, generator=g)
        t = torch.full((b,), 0.5)
        res[name] = median_ms(lambda: model(x, t, feats), repeats)
    res["params_m"] = model.num_parameters() / 1e6
    return res


def run(quick: bool = False) -> tuple[dict, str]:
    repeats = 3 if quick else 7
    figures: dict = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tiny_decoder(Path(tmp) / "ckpt", seed=0)
        codes = list(range(16))  # 4 x 4 grid -> 128 x 128 image
        for variant in ("turbo", "normal"):
            dec = ImageDecoder.from_pretrained(root, variant, device="cpu", dtype=torch.float32)
            figures[f"tiny_{variant}_decode_ms"] = median_ms(lambda: dec.decode(codes, 4, 4, seed=0), repeats)
            figures[f"tiny_{variant}_model_calls"] = dec.sampler.model_calls
        figures["tiny_resident"] = _resident_mib(dec)
    figures["tiny_step_4x4"] = _dit_step_ms(DiTConfig.tiny(), 4, 4, repeats * 3)
    mid_grid = 4 if quick else 8
    mid = _dit_step_ms(DiTConfig.mid(), mid_grid, mid_grid, repeats)
    figures[f"mid_step_{mid_grid}x{mid_grid}"] = mid
    # Whole-loop DiT time for the mid model = per-step time x model calls (the loop adds no work).
    figures["mid_turbo_loop_ms"] = mid["turbo_step_ms"] * FlowRenoiseSampler().model_calls
    figures["mid_normal_loop_ms"] = mid["normal_step_ms"] * FlowEulerSampler().model_calls
    figures["mid_resident_mib_fp32"] = mid["params_m"] * 4 * 1e6 / 2**20
    figures["full_dit_bf16_gib"] = 6_160_808_512 * 2 / 2**30
    return figures, _markdown(figures, mid_grid)


def _markdown(f: dict, mid_grid: int) -> str:
    tiny, mid = f["tiny_step_4x4"], f[f"mid_step_{mid_grid}x{mid_grid}"]
    r = f["tiny_resident"]
    return "\n".join(
        [
            "## Diffusion decoder (CPU)",
            "",
            f"torch threads: {f['torch_threads']}. Median wall times; normal = 49 Euler steps with CFG "
            "(2 rows per DiT call), turbo = 8 re-noising steps (1 row).",
            "",
            "| model | grid | turbo step | normal step (CFG) | turbo DiT loop | normal DiT loop |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            f"| tiny ({tiny['params_m']:.2f}M) | 4x4 codes | {tiny['turbo_step_ms']:.2f} ms | {tiny['normal_step_ms']:.2f} ms "
            f"| {tiny['turbo_step_ms'] * 8:.1f} ms | {tiny['normal_step_ms'] * 49:.1f} ms |",
            f"| mid ({mid['params_m']:.1f}M) | {mid_grid}x{mid_grid} codes | {mid['turbo_step_ms']:.1f} ms | "
            f"{mid['normal_step_ms']:.1f} ms | {f['mid_turbo_loop_ms']:.0f} ms | {f['mid_normal_loop_ms']:.0f} ms |",
            "",
            f"Whole decode through `ImageDecoder` (tiny checkpoint, SigVQ + DiT + VAE, 4x4 codes -> 128x128): "
            f"turbo {f['tiny_turbo_decode_ms']:.1f} ms, normal {f['tiny_normal_decode_ms']:.1f} ms.",
            "",
            f"Resident decoder memory: tiny {r['total_mib']:.1f} MiB (DiT {r['dit_mib']:.2f}, SigVQ {r['sigvq_mib']:.2f}, "
            f"VAE {r['vae_mib']:.2f}); mid DiT {f['mid_resident_mib_fp32']:.0f} MiB fp32; "
            f"published DiT {f['full_dit_bf16_gib']:.2f} GiB bf16 (+ SigVQ 0.19 GiB, VAE 0.16 GiB in bf16).",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    figures, md = run(args.quick)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
