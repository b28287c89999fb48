"""Train a small shapes model end to end and write it as a checkpoint in the published layout.

    python -m lladauni.model_core.training.build --out model_core/data/shapes-tiny --jobs 2 # the embedded default
    python -m lladauni.model_core.training.build --out /tmp/smoke --smoke                    # CI-sized
    python -m lladauni.model_core.training.build --out DIR --stages backbone                 # redo one stage

Stages (tokenizer, image_tokenizer, vae, decoder, backbone) write their parts into ``OUT.partial/``;
the finished checkpoint replaces ``OUT`` only at the end, so an interrupted build never leaves a
half-written model where a loader would look. Optimiser state for resuming lives in ``--work``
(default ``OUT.work/``): rerunning the same command continues where it stopped, with the same
result as an uninterrupted run (randomness is drawn per step from the seed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from ..backbone import LLaDA2Backbone
from ..checkpoint import load_backbone, save_backbone
from ..decoder.loading import save_dit
from ..decoder.sigvq import SIGVQ_SAFETENSORS
from ..pipeline import DEFAULTS_FILE
from ..image_tokenizer import CONFIG_NAME, PREPROCESSOR_NAME, TOKENIZER_DIR, SigLIPVQ, load_image_tokenizer_network
from ..tokenizer import TextTokenizer
from .corpus import BatchBuilder, texts_for_tokenizer
from .tasks import TaskOptions
from .spec import ShapesModelSpec
from .stages import decoder_pool, encode_scenes, init_backbone, train_backbone, train_decoder, train_image_tokenizer, train_vae
from .shapes import PLURAL_STEMS
from .text_tokenizer import build_compact_tokenizer

__all__ = ["STAGES", "build_shapes_model", "main"]

STAGES = ("tokenizer", "image_tokenizer", "vae", "decoder", "backbone")
TRAINING_LOG = "training.json"



# the task options the shapes model is run with (written to its lladauni.json): short answers and
# plans, the steps its evaluation used, and the turbo decoder at 8 steps
SHAPES_TASK_OPTIONS = {
    "chat": {"steps": 32, "gen_length": 64},
    "understand": {"steps": 32, "gen_length": 64},
    "image": {"steps": 16, "decoder_steps": 8, "thinking_steps": 32, "thinking_gen_length": 128},
    "edit": {"steps": 16, "decoder_steps": 8},
    "interleaved": {"text_gen_length": 64, "steps": 32, "image_steps": 16, "decoder_steps": 8},
}

def _save_image_tokenizer(net: SigLIPVQ, spec: ShapesModelSpec, root: Path, dtype: torch.dtype) -> None:
    d = root / TOKENIZER_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(d / "image_tokenizer.safetensors"), metadata={"format": "pt"})
    spec.image_tokenizer_config().to_json_file(d / CONFIG_NAME)
    spec.preprocessor_config().to_json_file(d / PREPROCESSOR_NAME)


def _load_image_tokenizer(root: Path) -> SigLIPVQ:
    return load_image_tokenizer_network(root / TOKENIZER_DIR, device="cpu", dtype=torch.float32).set_backends(attn="sdpa")


def _load_vae(root: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(root / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)


def _summary(log) -> dict:
    s = log.series("loss")
    k = max(1, min(50, len(s) // 10))
    return {"steps": len(s), "seconds": round(log.seconds, 1), "loss_first": round(float(np.mean(s[:k])), 5) if s else None,
            "loss_last": round(float(np.mean(s[-k:])), 5) if s else None}


def _backbone_stage(spec: ShapesModelSpec, partial: Path, work: Path, progress: bool, resume: bool,
                    dtype: torch.dtype, init_from: Optional[str | os.PathLike], threads: Optional[int] = None) -> dict:
    """Train the backbone (its schedules) from the tokenizers in ``partial`` and write its shards there.
    Returns its training records. Needs only the text and image tokenizers, so it can run beside the decoder
    stage (``jobs=2``)."""
    if threads is not None:
        torch.set_num_threads(threads)
    tok = TextTokenizer.from_pretrained(partial)
    offset = tok.image_code0
    if offset is None:
        raise RuntimeError(f"{partial}: the tokenizer has no <IMAGE0> token")
    config = spec.backbone_config(vocab_size=offset + spec.num_codes, image_token_offset=offset, pad_token_id=tok.special.pad)
    model = LLaDA2Backbone(config)
    init_backbone(model, spec.seed)
    if init_from is not None:
        src = load_backbone(init_from, device="cpu", dtype=torch.float32)
        if src.config.to_dict() != config.to_dict():
            raise ValueError(f"{init_from}: its backbone config differs from this spec's; cannot start from it")
        model.load_state_dict(src.state_dict())
    net = _load_image_tokenizer(partial)
    batches = BatchBuilder(tok, offset, lambda scenes: encode_scenes(net, scenes, spec), spec.grid,
                           batch_size=spec.steps.backbone_batch, block_length=spec.block_length,
                           mix=spec.task_mix or None, full_mask=spec.steps.backbone_full_mask,
                           task_options=TaskOptions.from_dict(spec.task_options),
                           ramp=(spec.steps.backbone_canonical, spec.steps.backbone_phrasing_ramp))
    def summary(log) -> dict:
        return {**_summary(log), "max_load_last": log.losses[-1].get("max_load") if log.losses else None}

    out: dict = {}
    model, log = train_backbone(spec, model, batches, work, progress=progress, resume=resume, lr=spec.steps.backbone_lr,
                                loss_norm=spec.steps.backbone_loss)
    out["backbone"] = summary(log)
    if spec.steps.backbone_second > 0:
        model, log = train_backbone(spec, model, lambda rng, gen, _s: batches(rng, gen), work, progress=progress,
                                    resume=resume, lr=spec.steps.backbone_second_lr, total=spec.steps.backbone_second,
                                    state_name="backbone_second", loss_norm=spec.steps.backbone_loss)
        out["backbone_second"] = summary(log)
    save_backbone(model, partial, dtype=dtype)
    return out


def _tokenizer_stage(spec: ShapesModelSpec, partial: Path) -> dict:
    t0 = time.perf_counter()
    texts = texts_for_tokenizer(np.random.default_rng([spec.seed, 1]), 6000)
    layout = build_compact_tokenizer(texts, partial, num_codes=spec.num_codes, grid_sides=(spec.grid,),
                                     bpe_vocab_size=spec.bpe_vocab_size, model_max_length=spec.max_positions,
                                     plural_stems=PLURAL_STEMS if spec.split_plurals else ())
    return {"tokenizer": {"seconds": round(time.perf_counter() - t0, 1), **layout}}


def _image_tokenizer_stage(spec: ShapesModelSpec, partial: Path, work: Path, progress: bool, resume: bool,
                           dtype: torch.dtype) -> dict:
    net, log = train_image_tokenizer(spec, work, progress=progress, resume=resume)
    _save_image_tokenizer(net, spec, partial, dtype)
    return {"image_tokenizer": {**_summary(log), "codes_used_last": log.losses[-1].get("used") if log.losses else None,
                                "cls_last": log.losses[-1].get("cls") if log.losses else None}}


def _vae_stage(spec: ShapesModelSpec, partial: Path, work: Path, progress: bool, resume: bool, dtype: torch.dtype) -> dict:
    vae, log = train_vae(spec, work, progress=progress, resume=resume)
    if (partial / "vae").exists():
        shutil.rmtree(partial / "vae")
    vae.to(dtype).save_pretrained(partial / "vae", safe_serialization=True)
    return {"vae": _summary(log)}


def _decoder_stage(spec: ShapesModelSpec, partial: Path, work: Path, progress: bool, resume: bool, dtype: torch.dtype,
                   before_step: Optional[Callable[[int], None]] = None) -> dict:
    net = _load_image_tokenizer(partial)
    vae = _load_vae(partial)
    st = spec.steps
    pool = decoder_pool(spec, net, vae, st.decoder_pool) if st.decoder_pool else None
    sigvq, dit, log = train_decoder(spec, net, vae, work, progress=progress, resume=resume, pool=pool,
                                    before_step=before_step)
    out = {"decoder": _summary(log)}
    if st.decoder_second > 0:
        sigvq, dit, log = train_decoder(spec, net, vae, work, progress=progress, resume=resume, start=(sigvq, dit),
                                        total=st.decoder_second, lr=st.decoder_second_lr,
                                        ink_weight=st.decoder_second_ink_weight, state_name="decoder_second",
                                        pool=pool, before_step=before_step)
        out["decoder_second"] = _summary(log)
    for folder in ("decoder", "decoder-turbo"):
        save_dit(dit, partial / folder, dtype=dtype)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in sigvq.state_dict().items()}
    save_file(tensors, str(partial / TOKENIZER_DIR / SIGVQ_SAFETENSORS), metadata={"format": "pt"})
    return out


def build_shapes_model(
    out: str | os.PathLike,
    spec: Optional[ShapesModelSpec] = None,
    *,
    work_dir: Optional[str | os.PathLike] = None,
    stages: Sequence[str] = STAGES,
    progress: bool = True,
    resume: bool = True,
    dtype: torch.dtype = torch.bfloat16,
    init_from: Optional[str | os.PathLike] = None,
    jobs: int = 1,
) -> dict:
    """Train the stages listed (the others are read from ``out``) and write the checkpoint to ``out``.
    Returns the training record also written to ``out/training.json``.

    ``init_from``: a checkpoint whose backbone weights start the backbone stage (fine-tuning, or a
    second schedule after a first), instead of a fresh initialisation.

    ``jobs=2``: as soon as the text and image tokenizers exist, the backbone stage runs in a second process
    (it needs neither the VAE nor the decoder) beside the VAE and then the decoder stage, each process on
    one thread. On two cores that is faster than running them one after the other on two threads each:
    these small models' steps are too short for a second thread to pay (the backbone steps ran about 1.4x
    faster on one thread)."""
    if jobs not in (1, 2):
        raise ValueError(f"jobs must be 1 or 2, not {jobs}")
    t_start = time.perf_counter()
    spec = spec or ShapesModelSpec()
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    out = Path(out)
    partial, work, earlier = _open_partial(out, work_dir)
    record: dict = {"spec": spec.to_dict(), "stages": earlier}
    done = record["stages"]
    if "tokenizer" in stages:
        done.update(_tokenizer_stage(spec, partial))
    if "image_tokenizer" in stages:
        done.update(_image_tokenizer_stage(spec, partial, work, progress, resume, dtype))
    if "backbone" in stages:
        done.pop("backbone_second", None)  # an earlier build's second schedule no longer applies
    if "decoder" in stages:
        done.pop("decoder_second", None)
    _late_stages(done, spec, stages, partial, work, progress, resume, dtype, init_from, jobs)
    record["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    record["jobs"] = jobs
    _publish(spec, record, partial, out)
    return record


def _open_partial(out: Path, work_dir: Optional[str | os.PathLike]) -> tuple[Path, Path, dict]:
    """Start ``OUT.partial`` afresh (a copy of ``out`` when there is one) and make the work folder.
    Returns (partial, work, the stage records of the build that wrote ``out``, or {})."""
    partial = out.with_name(out.name + ".partial")
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        shutil.rmtree(partial)
    if out.exists():
        shutil.copytree(out, partial)
    else:
        partial.mkdir(parents=True)
    old = partial / TRAINING_LOG
    if old.is_file():
        return partial, work, json.loads(old.read_text(encoding="utf-8")).get("stages", {})
    return partial, work, {}


def _late_stages(done: dict, spec: ShapesModelSpec, stages: Sequence[str], partial: Path, work: Path,
                 progress: bool, resume: bool, dtype: torch.dtype,
                 init_from: Optional[str | os.PathLike], jobs: int) -> None:
    """The VAE, decoder and backbone stages listed in ``stages``, their records added to ``done``: one after
    the other, or with ``jobs=2`` (backbone and decoder both listed) the backbone in a second process beside
    the VAE and the decoder, one thread each; the decoder takes back the process's threads once the backbone is
    done (two threads made a decoder step 1.7x faster)."""
    pending = pool = widen = None
    threads = torch.get_num_threads()
    if jobs == 2 and "backbone" in stages and "decoder" in stages:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(1)
        pending = pool.apply_async(_backbone_stage, (spec, partial, work, False, resume, dtype, init_from, 1))
        torch.set_num_threads(1)

        def widen(_step: int) -> None:
            if pending.ready() and torch.get_num_threads() < threads:
                torch.set_num_threads(threads)

    try:
        if "vae" in stages:
            done.update(_vae_stage(spec, partial, work, progress, resume, dtype))
        if "decoder" in stages:
            done.update(_decoder_stage(spec, partial, work, progress, resume, dtype, before_step=widen))
        if pool is None:
            if "backbone" in stages:
                done.update(_backbone_stage(spec, partial, work, progress, resume, dtype, init_from))
        else:
            done.update(pending.get())
            pool.close()
            pool.join()
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        torch.set_num_threads(threads)


def _publish(spec: ShapesModelSpec, record: dict, partial: Path, out: Path) -> None:
    """Write the generation defaults and the training record into ``partial``, then put it in ``out``'s place."""
    defaults = {
        "about": "Generation defaults for this checkpoint (read by LLaDAUni when the caller gives none): options per "
                 "task (model_core.options), the image size and the decoder's guidance; 'world' names the closed world "
                 "it was trained on (requests outside it are refused with what it can draw).",
        "world": "shapes",
        "image_size": [spec.image_size, spec.image_size],
        "block_length": spec.block_length,
        "decoder_cfg": {"turbo": spec.decoder_cfg},
        "options": SHAPES_TASK_OPTIONS,
    }
    (partial / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n", encoding="utf-8")
    (partial / TRAINING_LOG).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lladauni.model_core.training.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--work", default=None, help="resumable training state (default OUT.work)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--smoke", action="store_true", help="the CI-sized recipe (a few steps per stage)")
    p.add_argument("--spec", default=None, help="a JSON file with ShapesModelSpec fields")
    p.add_argument("--fresh", action="store_true", help="ignore saved training state")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--init-from", default=None, help="start the backbone stage from this checkpoint's backbone")
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                   help="2: train the backbone in a second process beside the decoder (one thread each)")
    args = p.parse_args(argv)
    if args.spec:
        spec = ShapesModelSpec.from_dict(json.loads(Path(args.spec).read_text(encoding="utf-8")))
    else:
        spec = ShapesModelSpec.smoke() if args.smoke else ShapesModelSpec()
    t0 = time.perf_counter()
    record = build_shapes_model(args.out, spec, work_dir=args.work, stages=args.stages, progress=not args.no_progress,
                                resume=not args.fresh, init_from=args.init_from, jobs=args.jobs)
    for name, st in record["stages"].items():
        print(f"{name}: {json.dumps(st)}")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
