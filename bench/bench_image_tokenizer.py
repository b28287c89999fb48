"""CPU throughput of the SigLIP-VQ image tokenizer with the weights resident.

    python -m bench.bench_image_tokenizer [--quick]

For the tiny config (hidden 32, 2 layers) and a mid-size one (hidden 512, 8 layers, 8 heads, the
published 128x128 position table and 16,384 x 512 codebook), each loaded once from a checkpoint
written in the published layout: encode throughput (images/s and codes/s) for 512² images
(purpose "none": 32x32 = 1,024 codes each) one at a time and as a batch of 4, the time of
preprocessing alone ("understand" resize of a 1024x768 source + normalisation), and the
network time split into ViT and VQ. ``run(quick)`` returns (figures, markdown section).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.timing import median_ms
from PIL import Image

from lladauni.model_core import BackboneConfig
from lladauni.model_core.image_config import ImageTokenizerConfig, VisionConfig, VQConfig
from lladauni.model_core.image_tokenizer import ImageTokenizer
from lladauni.model_core.image_preprocess import prepare_image
from lladauni.model_core.testing_image import write_tiny_image_tokenizer

CONFIGS = {
    "tiny": ImageTokenizerConfig.tiny,
    "mid": lambda: ImageTokenizerConfig(
        vision_config=VisionConfig(depth=8, hidden_size=512, num_heads=8, intermediate_size=2048),
        vq_config=VQConfig(embed_dim=512, latent_channels=512),
    ),
}


def _time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds."""
    return median_ms(fn, repeats, warmup) / 1e3


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@torch.no_grad()
def bench_config(name: str, repeats: int) -> dict:
    cfg = CONFIGS[name]()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        BackboneConfig.tiny().to_json_file(root / "config.json")
        write_tiny_image_tokenizer(root, seed=0, config=cfg)
        t = time.perf_counter()
        tok = ImageTokenizer.from_pretrained(root, device="cpu", dtype=torch.float32)
        load_s = time.perf_counter() - t
    params = sum(p.numel() for p in tok.network.parameters())
    imgs = [_image(512, 512, s) for s in range(4)]
    one = _time(lambda: tok.encode(imgs[0], purpose="none"), repeats)
    four = _time(lambda: tok.encode(imgs, purpose="none"), repeats)
    src = _image(1024, 768, 9)
    pre = _time(lambda: prepare_image(src, "understand", tok.preprocessor), repeats)
    _, pv, grid = tok.prepare(imgs[0], "none")
    feats = tok.network.features(pv, [grid])
    vit = _time(lambda: tok.network.features(pv, [grid]), repeats)
    vq = _time(lambda: tok.network.quantize(feats), repeats)
    codes = grid[0] * grid[1]
    return {
        "parameters": params,
        "load_s": load_s,
        "codes_per_image": codes,
        "encode1_s": one,
        "encode1_images_per_s": 1 / one,
        "encode1_codes_per_s": codes / one,
        "encode4_s": four,
        "encode4_images_per_s": 4 / four,
        "encode4_codes_per_s": 4 * codes / four,
        "vit_s": vit,
        "vq_s": vq,
        "preprocess_understand_1024x768_s": pre,
    }


def run(quick: bool) -> tuple[dict, str]:
    repeats = 3 if quick else 7
    torch.manual_seed(0)
    res = {name: bench_config(name, repeats) for name in CONFIGS}
    res["threads"] = torch.get_num_threads()
    lines = [
        "## Image tokenizer: encode throughput on CPU (fp32, weights resident)",
        "",
        f"512² images with purpose \"none\" (32x32 = 1,024 codes each); {res['threads']} threads; medians of "
        f"{repeats} runs. `mid` = hidden 512, 8 layers, 128x128 position table, 16,384 x 512 codebook.",
        "",
        "| config | parameters | 1 image: images/s | codes/s | batch of 4: images/s | codes/s | ViT ms | VQ ms | preprocess ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        r = res[name]
        lines.append(
            f"| {name} | {r['parameters'] / 1e6:.1f}M | {r['encode1_images_per_s']:.1f} | {r['encode1_codes_per_s']:,.0f} | "
            f"{r['encode4_images_per_s']:.1f} | {r['encode4_codes_per_s']:,.0f} | {r['vit_s'] * 1e3:.1f} | "
            f"{r['vq_s'] * 1e3:.1f} | {r['preprocess_understand_1024x768_s'] * 1e3:.1f} |"
        )
    lines += [
        "",
        "Preprocess = loading-free \"understand\" resize of a 1024x768 source to 800x608 plus normalisation "
        "and patch rows. The full-size (1.2B) figure on GPU comes from `bench/gpu_image_tokenizer.py`.",
        "",
    ]
    return res, "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    res, md = run(args.quick)
    print(json.dumps(res, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
