"""Full-size SigLIP-VQ tokenizer on a GPU: encode timings for one image, printed as JSON.

    python bench/gpu_image_tokenizer.py [--size 1024] [--dtype bfloat16] [--repeats 10]
    python bench/gpu_image_tokenizer.py --dry-run      # parse arguments only (safe on CPU)

Builds the published configuration (40 layers, hidden 1536, 16,384 x 2048 codebook; 1.2B
parameters) with random weights directly on the device (no checkpoint needed), then times,
weights resident: the network on a size x size image with purpose "none" (size/16 squared codes;
1024² -> 64x64 = 4,096 codes), the same split into ViT and VQ, a batch of 4 such images, and the
whole ``encode`` with the "understand" resize (800² budget -> 2,500 codes) and "edit" crop
(512² -> 1,024 codes), preprocessing included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench._checkout import use_checkout  # noqa: E402

use_checkout()  # the GPU machine runs this checkout uninstalled


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Full-size image tokenizer GPU timings (JSON).")
    ap.add_argument("--size", type=int, default=1024, help="square image side in pixels (multiple of 16)")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--attn", default="auto", help="attention backend (auto, sdpa, eager)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="print the parsed arguments and exit")
    args = ap.parse_args(argv)
    if args.size <= 0 or args.size % 16:
        ap.error(f"--size={args.size}: must be a positive multiple of 16")
    if args.repeats <= 0:
        ap.error(f"--repeats={args.repeats}: must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print(json.dumps({"dry_run": True, **{k: v for k, v in vars(args).items() if k != "dry_run"}}))
        return 0

    import numpy as np
    import torch
    from PIL import Image

    from lladauni.model_core.image_config import ImageTokenizerConfig, PreprocessorConfig
    from lladauni.model_core.image_tokenizer import ImageTokenizer, SigLIPVQ

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available"}))
        return 1
    dtype = getattr(torch, args.dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, repeats: int = args.repeats) -> float:
        fn()
        sync()
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    t0 = time.perf_counter()
    with torch.device("meta"):
        net = SigLIPVQ(ImageTokenizerConfig.full())
    net = net.to_empty(device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    net = net.eval().requires_grad_(False).set_backends(attn=args.attn)
    tok = ImageTokenizer(net, PreprocessorConfig(), image_token_offset=157184)
    build_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (args.size // 16, args.size // 16, 3), dtype=np.uint8)).resize(
        (args.size, args.size), Image.BICUBIC
    )
    _, pv, grid = tok.prepare(img, "none")
    pv_dev = pv.to(device)
    codes = grid[0] * grid[1]
    with torch.no_grad():
        feats = net.features(pv_dev, [grid])
        net_s = timed(lambda: net(pv_dev, [grid]))
        vit_s = timed(lambda: net.features(pv_dev, [grid]))
        vq_s = timed(lambda: net.quantize(feats))
        pv4 = torch.cat([pv_dev] * 4)
        batch4_s = timed(lambda: net(pv4, [grid] * 4), max(1, args.repeats // 2))
    enc_none_s = timed(lambda: tok.encode(img, purpose="none"))
    enc_und_s = timed(lambda: tok.encode(img, purpose="understand"))
    enc_edit_s = timed(lambda: tok.encode(img, purpose="edit"))
    und = tok.encode(img, purpose="understand")
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "parameters": sum(p.numel() for p in net.parameters()),
        "build_s": build_s,
        "image": f"{args.size}x{args.size}",
        "codes": codes,
        "network_ms": net_s * 1e3,
        "network_codes_per_s": codes / net_s,
        "vit_ms": vit_s * 1e3,
        "vq_ms": vq_s * 1e3,
        "batch4_ms": batch4_s * 1e3,
        "batch4_images_per_s": 4 / batch4_s,
        "encode_none_ms": enc_none_s * 1e3,
        "encode_understand_ms": enc_und_s * 1e3,
        "understand_grid": [und.h, und.w],
        "encode_edit_ms": enc_edit_s * 1e3,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
