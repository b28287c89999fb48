"""Where the shapes model's drawings go wrong, and the decoder guidance that fixes most of it.

    python -m bench.shapes_decoder [--checkpoint DIR] [--n 200] [--write-results]

On held-out captions (``ShapesWorld(seed)``, the seeds of ``bench.shapes_eval``) the backbone draws codes
once; then

* **codes**: does every cell's code name the requested content (empty, or the colour and kind)? Codes are
  named by the content they stand for most often on rendered scenes of another world seed.
* **decoder guidance**: the same codes and decoder seeds decoded with the turbo sampler at several step
  counts and classifier-free guidance scales (``NormClampedCFG``; 0 = none, the published turbo policy),
  each image judged by the pixel checker. The checkpoint's own setting (``lladauni.json`` decoder_cfg) is
  marked.
* **can a check see the failures?** For the images that fail the checker under the checkpoint's setting:
  how many re-encode (image tokenizer) to codes that differ from the requested content. A check that reads
  the codes (the workflows' ``retokenize: reuse``) sees none of them; one that re-encodes the pixels sees
  at most these.

``--write-results`` replaces (or appends) the ``## shapes_decoder`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import numpy as np

from lladauni.model_core.training import checker, shapes
from lladauni.model_core.training.stages import cell_labels, code_contents

from .shapes_eval import RESULTS, SIZE, gen_seed, machine_description, write_results

SECTION = "shapes_decoder"
STEPS = (4, 8)
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


def run(model, n: int, seed: int) -> dict:
    from lladauni.model_core.decoder.samplers import FlowRenoiseSampler, NoGuidance, NormClampedCFG

    names = code_contents(model.image_tokenizer, [shapes.ShapesWorld(77)[i].scene for i in range(150)], SIZE)

    def names_scene(codes, scene) -> bool:
        return bool((names[np.asarray(codes).reshape(-1)] == cell_labels([scene]).numpy()).all())

    exs = shapes.ShapesWorld(seed).examples(n)
    t0 = time.perf_counter()
    drawn = [model.generate_image(ex.caption, image_h=SIZE, image_w=SIZE, steps=16, decode=False, seed=gen_seed(seed, ex.index))
             for ex in exs]
    draw_s = time.perf_counter() - t0
    codes_ok = sum(names_scene(r.codes, ex.scene) for ex, r in zip(exs, drawn))
    dec = model.decoder
    own = dec.sampler
    own_scale = own.guidance.scale if isinstance(own.guidance, NormClampedCFG) else 0.0
    rows, failed = [], None
    try:
        for steps in STEPS:
            for scale in SCALES:
                dec.sampler = FlowRenoiseSampler(steps, guidance=NormClampedCFG(scale) if scale else NoGuidance())
                t0 = time.perf_counter()
                images = [dec.decode(r.codes.reshape(-1), r.h, r.w, seed=gen_seed(seed, ex.index)) for ex, r in zip(exs, drawn)]
                ok = [checker.scene_matches(ex.scene, im) for ex, im in zip(exs, images)]
                is_own = isinstance(own, FlowRenoiseSampler) and steps == own.num_steps and scale == own_scale
                rows.append({"steps": steps, "cfg": scale, "correct": sum(ok), "seconds": time.perf_counter() - t0, "own": is_own})
                if is_own:
                    failed = [(ex, im) for ex, im, good in zip(exs, images, ok) if not good]
    finally:
        dec.sampler = own
    seen = sum(not names_scene(model.image_tokenizer.encode(im).codes, ex.scene) for ex, im in failed or [])
    return {"n": n, "seed": seed, "codes_ok": codes_ok, "draw_seconds": draw_s, "rows": rows,
            "own_failed": None if failed is None else len(failed), "own_failed_seen_by_reencoding": seen}


def format_markdown(res: dict, *, model: str, machine: str) -> str:
    n = res["n"]
    out = [
        f"## {SECTION}: where the shapes model's drawings fail, and decoder guidance",
        "",
        f"{model}; {n} held-out captions (`ShapesWorld({res['seed']})`, the seeds of shapes_eval); "
        "`python -m bench.shapes_decoder`. The backbone draws codes once; each row decodes the same codes with "
        "the same decoder seeds.",
        "",
        f"Codes naming exactly the requested content of every cell: {res['codes_ok']}/{n}.",
        "",
        "| turbo steps | decoder CFG | checker passes | seconds |",
        "|---|---|---|---|",
    ]
    for r in res["rows"]:
        mark = " (checkpoint default)" if r["own"] else ""
        out.append(f"| {r['steps']} | {r['cfg']:g}{mark} | {r['correct']}/{n} ({100 * r['correct'] / n:.1f}%) "
                   f"| {r['seconds']:.1f} |")
    if res["own_failed"] is not None:
        out += ["", f"Of the {res['own_failed']} images that fail the checker at the checkpoint default, "
                    f"{res['own_failed_seen_by_reencoding']} re-encode to codes that differ from the request: a check "
                    "reading the drawn codes sees none of these failures, one reading re-encoded pixels at most that many."]
    out += ["", f"_Measured {time.strftime('%Y-%m-%d')} on {machine}._", ""]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shapes_decoder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the embedded default model)")
    ap.add_argument("--n", type=int, default=200, help="held-out captions (default: 200)")
    ap.add_argument("--seed", type=int, default=1000, help="world seed (default: 1000)")
    ap.add_argument("--write-results", action="store_true", help=f"write the '## {SECTION}' section of {RESULTS.name}")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    from lladauni.model_core import LLaDAUni

    model = LLaDAUni.from_pretrained(args.checkpoint, components=("backbone", "image_tokenizer", "decoder"), device="cpu")
    res = run(model, args.n, args.seed)
    name = "Embedded default model" if args.checkpoint is None else f"Checkpoint `{args.checkpoint}`"
    md = format_markdown(res, model=name, machine=machine_description())
    print(md)
    if args.write_results:
        write_results(md, RESULTS, section=SECTION)
        print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
