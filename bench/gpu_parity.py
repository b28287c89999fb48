"""Correctness of the fast paths at the published layer width, in fp32 (bf16 is chaotic on a
random model: a routing flip in one layer changes every later one, so bf16 backends are compared
per operation in the kernel tests, never end to end).

- ``backend_rows``: one forward (prefill and a cached CFG block step) of a full-width backbone
  (hidden 2048, 256 experts, 16/4 heads of 128; ``layers`` deep) with each fast backend
  against the eager reference (eager attention, loop MoE, torch norms): the relative max logit
  error, which must stay under ``TOLERANCE`` (the issue's measured 2e-5, with margin).
- ``static_loop_rows``: text, image-with-CFG and editing generations, static loop (captured CUDA
  graphs on CUDA) against the exact cache, same backends: the tokens must be identical.

Used by ``bench/gpu_checks.py`` (the device run, JSON) and ``tests/test_gpu_parity.py`` (pytest
on a GPU machine). ``small=True`` shrinks everything for a CPU dry run.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch

TOLERANCE = 1e-4
MASK_ID, EOS_ID = 156895, 156892


def _config(small: bool, layers: int):
    from lladauni.model_core.config import BackboneConfig

    cfg = BackboneConfig.tiny() if small else BackboneConfig.full()
    return cfg.replace(num_hidden_layers=layers, first_k_dense_replace=min(cfg.first_k_dense_replace, 1))


def build(small: bool, device: torch.device, layers: int = 2):
    from bench.gpu_kernels import build_backbone

    return build_backbone(_config(small, layers), device, torch.float32)


def _forward_pair(model, device: torch.device, small: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from lladauni.model_core.layers.attention import AttentionMask

    P, Q = (40, 8) if small else (1024, 32)
    g = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(0, 150000, (2, P), generator=g).to(device)
    block = torch.randint(0, 150000, (2, Q), generator=g).to(device)
    valid = torch.ones(2, P + Q, dtype=torch.bool, device=device)
    valid[1, : P // 4] = False  # a CFG row's left padding
    pre = model(prompt, mask=AttentionMask.block_causal(P, Q, key_valid=valid[:, :P], device=device),
                return_kv=True, block_size=Q, logits_for=Q, check_inputs=False)
    step = model(block, torch.arange(P, P + Q, device=device), AttentionMask.prefix_and_block(P, Q, key_valid=valid, device=device),
                 past=pre.kv, check_inputs=False)
    return pre.logits, step.logits


BACKENDS = {
    "reference": dict(attn="eager", moe="loop", norm="torch", routing="torch"),
    "sdpa": dict(attn="sdpa", moe="loop", norm="torch", routing="torch"),
    "triton_attention": dict(attn="triton", moe="loop", norm="torch", routing="torch"),
    "triton_moe": dict(attn="eager", moe="triton", norm="torch", routing="torch"),
    "triton_norm": dict(attn="eager", moe="loop", norm="triton", routing="torch"),
    "triton_routing": dict(attn="eager", moe="loop", norm="torch", routing="triton"),
    "all_kernels": dict(attn="triton", moe="triton", norm="triton", routing="triton"),
}


@torch.no_grad()
def backend_rows(model, device: torch.device, small: bool) -> list[dict[str, Any]]:
    model.set_backends(**BACKENDS["reference"])
    ref = _forward_pair(model, device, small)
    rows = []
    for name, backends in BACKENDS.items():
        if name == "reference":
            continue
        row: dict[str, Any] = {"backends": name}
        try:
            model.set_backends(**backends)
            got = _forward_pair(model, device, small)
            errs = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref)]
            row.update(prefill_rel_err=errs[0], step_rel_err=errs[1], ok=max(errs) < TOLERANCE)
        except Exception as exc:  # every backend gets a row
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-600:])
        rows.append(row)
    model.set_backends(attn="auto", moe="auto", norm="auto", routing="auto")
    return rows


@torch.no_grad()
def static_loop_rows(model, device: torch.device, small: bool) -> list[dict[str, Any]]:
    from lladauni.model_core.generation import BlockDiffusionSampler, CFGSpec, SamplerConfig

    sampler = BlockDiffusionSampler(model, mask_id=MASK_ID, eos_id=EOS_ID)
    ids = lambda n, seed: torch.randint(0, 150000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    n = 64 if small else 96
    cases = {
        "text": (ids(70, 1), dict(gen_length=n, steps=8, eos_early_stop=False)),
        "text_sampled": (ids(40, 2), dict(gen_length=n, steps=4, temperature=1.0, eos_early_stop=False)),
        "image_cfg": (ids(45, 3), dict(gen_length=n, steps=8, image_only=True, cfg=CFGSpec("simple", null_ids=ids(9, 4), scale=4.0))),
        "edit_cfg": (ids(50, 5), dict(gen_length=n, steps=8, image_only=True, cfg=CFGSpec(
            "editing", null_ids=ids(40, 6), null_image_ids=ids(12, 7), text_scale=4.0, image_scale=1.5))),
    }
    rows = []
    for name, (prompt, kw) in cases.items():
        row: dict[str, Any] = {"case": name}
        try:
            runs = {}
            for cache in ("exact", "static"):
                runs[cache] = sampler.generate(prompt, SamplerConfig(cache=cache, **kw), generator=torch.Generator().manual_seed(0))
            same = torch.equal(runs["exact"].tokens.cpu(), runs["static"].tokens.cpu())
            st = sampler.static_workspace
            graphs = st.captured if st is not None else []
            row.update(tokens_equal=same, graphs=graphs, ok=same and (device.type != "cuda" or bool(graphs)))
        except Exception as exc:
            row.update(ok=False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-600:])
        rows.append(row)
    return rows
