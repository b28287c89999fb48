"""model_core pulls its kernels by capability: every attention and MoE call shape of the published
configs (backbone, image-tokenizer ViT, DiT) walks through the chooser, which uses a kernel only
where the kernel serves the call and the torch path everywhere else; a kernels import that fails
is reported once, with its cause.

The calls are captured from the real layers at full width on the meta device (so the strides are
the ones the model makes), then decided as on a GPU (``kernel_device=True``), and run on CPU under
Triton's interpreter at short sequence lengths against the fp32 eager reference.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from tests.kernel_fixtures import needs_triton  # sets TRITON_INTERPRET=1 on CPU

import lladauni.kernels._triton as triton_glue
import lladauni.model_core.kernel_choice as kc
from lladauni.model_core.backbone import Attention as BackboneAttention
from lladauni.model_core.config import BackboneConfig
from lladauni.model_core.decoder import dit as dit_mod
from lladauni.model_core.decoder.config import DiTConfig
from lladauni.model_core.image_config import ImageTokenizerConfig
from lladauni.model_core.image_tokenizer import VisionAttention
from lladauni.model_core.layers.attention import AttentionMask, choose_attention, eager_attention
from lladauni.model_core.moe import SparseMoeBlock, choose_moe, loop_moe

META = torch.device("meta")


def _record(calls: list, kind: str):
    def attn(q, k, v, mask, scale):
        calls.append((kind, q, k, v, mask, scale))
        return torch.empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3], dtype=q.dtype, device=q.device).transpose(1, 2)

    return attn


def _backbone_calls(dtype: torch.dtype) -> list:
    """The backbone's attention calls: a 64-token prefill, and a CFG block step (two rows, one
    left-padded) of 32 active tokens over a 1,024-token cache."""
    cfg = BackboneConfig.full()
    calls: list = []
    with torch.device(META):
        layer = BackboneAttention(cfg).to(dtype)
    layer.backend = _record(calls, "backbone")
    D, rot = cfg.head_dim, int(cfg.head_dim * cfg.partial_rotary_factor)
    for B, prefix, Q in ((1, 0, 64), (2, 1024, 32)):
        x = torch.empty(B, Q, cfg.hidden_size, dtype=dtype, device=META)
        cos = sin = torch.empty(B, Q, rot, dtype=dtype, device=META)
        past = None
        if prefix:
            past = tuple(torch.empty(B, cfg.num_key_value_heads, prefix, D, dtype=dtype, device=META) for _ in range(2))
        valid = torch.ones(B, prefix + Q, dtype=torch.bool, device=META) if B > 1 else None
        mask = AttentionMask.prefix_and_block(prefix, Q, key_valid=valid, device=META) if prefix else AttentionMask.block_causal(Q, 32, device=META)
        layer(x, cos, sin, mask, past)
    return calls


def _vit_calls(dtype: torch.dtype) -> list:
    """The image tokenizer's ViT attention over a 32x32-patch image (head_dim 96)."""
    vc = ImageTokenizerConfig.full().vision_config
    calls: list = []
    with torch.device(META):
        layer = VisionAttention(vc).to(dtype)
    layer.attn_fn = _record(calls, "vit")
    n = 1024
    layer(torch.empty(1, n, vc.hidden_size, dtype=dtype, device=META), AttentionMask.full(n, n, device=META))
    return calls


def _dit_calls(dtype: torch.dtype, monkeypatch) -> list:
    """The DiT's attention (unmasked, 30 heads of 128) over a 1024-token image + 32 caption tokens."""
    cfg = DiTConfig.full()
    calls: list = []
    with torch.device(META):
        layer = dit_mod.Attention(cfg.dim, cfg.n_heads).to(dtype)

    def sdpa(q, k, v, **kw):
        mask = AttentionMask.full(q.shape[2], k.shape[2], device=META)
        calls.append(("dit", q, k, v, mask, q.shape[-1] ** -0.5))
        return torch.empty_like(q)

    monkeypatch.setattr(dit_mod, "F", types.SimpleNamespace(scaled_dot_product_attention=sdpa))
    monkeypatch.setattr(dit_mod, "apply_rope", lambda x, freqs: x)
    S = 1024 + 32
    layer(torch.empty(1, S, cfg.dim, dtype=dtype, device=META), torch.empty(S, cfg.dim // cfg.n_heads // 2, dtype=torch.complex64, device=META))
    return calls


def _published_attention_calls(dtype, monkeypatch) -> list:
    return _backbone_calls(dtype) + _vit_calls(dtype) + _dit_calls(dtype, monkeypatch)


def _cpu_like(t: torch.Tensor, length_dim: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """A CPU tensor with t's layout (strides in the same order), its sequence dim cut to ``length``."""
    shape = list(t.shape)
    shape[length_dim] = min(shape[length_dim], length)
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)  # outermost first
    base = torch.randn([shape[d] for d in order], generator=gen).to(t.dtype)
    return base.permute([order.index(d) for d in range(t.dim())])


def _small_mask(kind: str, mask: AttentionMask, Q: int, S: int, B: int) -> AttentionMask:
    """The same kind of mask as ``mask``, on CPU, for Q queries over S keys."""
    if mask.key_valid is not None:
        valid = torch.ones(B, S, dtype=torch.bool)
        valid[1:, : (S - Q) // 2] = False  # a left-padded CFG row
        return AttentionMask.prefix_and_block(S - Q, Q, key_valid=valid, device="cpu")
    if kind == "backbone" and Q == S:
        return AttentionMask.block_causal(S, 8, device="cpu")  # a prefill: three blocks
    if Q == S:
        return AttentionMask.full(Q, S, device="cpu")
    return AttentionMask.prefix_and_block(S - Q, Q, device="cpu")


# ------------------------------------------------------------------ attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_published_attention_shape_is_decided_by_capability(dtype, monkeypatch):
    calls = _published_attention_calls(dtype, monkeypatch)
    assert [c[0] for c in calls] == ["backbone", "backbone", "vit", "dit"]
    op = kc.kernel_module("attention")
    assert op is not None
    monkeypatch.setattr(triton_glue, "can_launch", lambda *t: True)  # decide as on a GPU; shapes and strides decide
    chosen = {}
    for kind, q, k, v, mask, _ in calls:
        name, _fn = choose_attention(q, k, v, mask, kernel_device=True)
        chosen.setdefault(kind, set()).add(name)
        reason = op.unsupported(q, k, v, mask.query_block, mask.key_block, mask.key_valid)
        assert (name == "triton") == (reason is None), (kind, name, reason)
    # head_dim 128 (backbone, DiT) is the kernel's; the ViT's 96 is not a power of two: SDPA serves it.
    assert chosen == {"backbone": {"triton"}, "vit": {"sdpa"}, "dit": {"triton"}}
    vit = next(c for c in calls if c[0] == "vit")
    assert "power of two" in op.unsupported(vit[1], vit[2], vit[3], vit[4].query_block, vit[4].key_block, None)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_runs_every_published_attention_shape_where_torch_would(dtype, monkeypatch):
    """The chosen backend runs each call (sequence cut short) on CPU under the interpreter and
    matches the fp32 eager reference: ``auto`` never raises where torch would not."""
    gen = torch.Generator().manual_seed(0)
    ran = set()
    for kind, q, k, v, mask, scale in _published_attention_calls(dtype, monkeypatch):
        Q, S = min(q.shape[2], 24), min(k.shape[2], 40 if k.shape[2] > q.shape[2] else 24)
        qs, ks, vs = (_cpu_like(q, 2, Q, gen), _cpu_like(k, 2, S, gen), _cpu_like(v, 2, S, gen))
        small = _small_mask(kind, mask, Q, S, q.shape[0])
        name, fn = choose_attention(qs, ks, vs, small, kernel_device=True)
        out = fn(qs, ks, vs, small, scale)
        ref = eager_attention(qs.float(), ks.float(), vs.float(), small, scale)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol, msg=f"{kind} via {name}")
        ran.add((kind, name))
    assert ran == {("backbone", "triton"), ("vit", "sdpa"), ("dit", "triton")}


def test_auto_on_cpu_tensors_is_the_torch_path():
    q = torch.randn(1, 4, 8, 96)
    assert choose_attention(q, q, q, AttentionMask.full(8, 8))[0] == "sdpa"
    q = torch.randn(1, 4, 8, 128)
    assert choose_attention(q, q, q, AttentionMask.full(8, 8))[0] == "sdpa"  # CPU: no kernel device


# ------------------------------------------------------------------ MoE


def _moe_calls(dtype: torch.dtype) -> list:
    cfg = BackboneConfig.full()
    calls: list = []
    with torch.device(META):
        block = SparseMoeBlock(cfg).to(dtype)

    def record(x, gu, dn, ids, w):
        calls.append((x, gu, dn, ids, w))
        return torch.empty_like(x)

    block.backend = record
    for B, T in ((1, 32), (1, 64), (2, 32)):  # a block step, a prefill chunk, a CFG block step
        block(torch.empty(B, T, cfg.hidden_size, dtype=dtype, device=META))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_published_moe_shape_is_the_fused_kernels(dtype, monkeypatch):
    calls = _moe_calls(dtype)
    assert len(calls) == 3
    op = kc.kernel_module("moe")
    monkeypatch.setattr(triton_glue, "can_launch", lambda *t: True)
    for x, gu, dn, ids, w in calls:
        assert tuple(gu.shape) == (256, 1024, 2048) and tuple(ids.shape) == (x.shape[0], 8)
        assert choose_moe(x, gu, dn, ids, w, kernel_device=True)[0] == "triton"


@needs_triton
def test_moe_falls_back_to_the_loop_for_calls_the_kernel_does_not_serve():
    """Non-contiguous expert weights (a transposed view) and mixed dtypes: the kernel refuses, the
    loop serves them, and ``auto``'s answer equals the loop's."""
    g = torch.Generator().manual_seed(0)
    E, H, I, T, K = 4, 16, 8, 5, 2
    x = torch.randn(T, H, generator=g)
    gu = torch.randn(E, H, 2 * I, generator=g).transpose(1, 2)  # (E, 2I, H), not contiguous
    dn = torch.randn(E, H, I, generator=g)
    ids = torch.randint(0, E, (T, K), generator=g)
    w = torch.rand(T, K, generator=g)
    name, fn = choose_moe(x, gu, dn, ids, w, kernel_device=True)
    assert name == "loop"
    assert "contiguous" in kc.kernel_module("moe").unsupported(x, gu, dn, ids, w)
    torch.testing.assert_close(fn(x, gu, dn, ids, w), loop_moe(x, gu.contiguous(), dn, ids, w))
    name, _ = choose_moe(x, gu.contiguous(), dn.double(), ids, w, kernel_device=True)
    assert name == "loop"
    name, _ = choose_moe(x, gu.contiguous(), dn, ids, w, kernel_device=True)
    assert name == "triton"  # and the same call, laid out as the kernel wants, is the kernel's


# ------------------------------------------------------------------ nothing silent


@pytest.fixture
def fresh_choice(monkeypatch):
    monkeypatch.setattr(kc, "_MODULES", {})
    monkeypatch.setattr(kc, "_ERRORS", {})
    monkeypatch.setattr(kc, "_REPORTED", set())


def _kernels_fail_to_import(monkeypatch, message: str) -> None:
    """Every ``lladauni.kernels.*`` import raises ImportError(message); other imports work."""
    real = kc.importlib.import_module

    def broken(name, *a, **kw):
        if name.startswith("lladauni.kernels."):
            raise ImportError(message)
        return real(name, *a, **kw)

    monkeypatch.setattr(kc.importlib, "import_module", broken)


def test_a_kernels_import_failure_is_reported_once_with_its_cause(fresh_choice, monkeypatch):
    _kernels_fail_to_import(monkeypatch, "libcuda.so.1: cannot open shared object file")
    q = torch.randn(1, 2, 4, 128)
    with pytest.warns(RuntimeWarning, match=r"lladauni.kernels.attention failed to import \(ImportError: libcuda"):
        assert choose_attention(q, q, q, AttentionMask.full(4, 4), kernel_device=True)[0] == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call says nothing more
        assert choose_attention(q, q, q, AttentionMask.full(4, 4), kernel_device=True)[0] == "sdpa"
    with warnings.catch_warnings(record=True) as caught:  # each other op once too
        warnings.simplefilter("always")
        status = kc.kernel_status()
    reported = sorted(str(w.message).split(" failed to import")[0] for w in caught)
    assert reported == ["lladauni.kernels.moe", "lladauni.kernels.norm", "lladauni.kernels.routing"]
    assert all(status[op].startswith("ImportError: libcuda") for op in ("attention", "moe", "norm", "routing"))


def test_triton_missing_on_a_kernel_device_is_reported_once(fresh_choice, monkeypatch):
    monkeypatch.setattr(triton_glue, "HAS_TRITON", False)
    q = torch.randn(1, 2, 4, 128)
    with pytest.warns(RuntimeWarning, match=r"Triton is not installed.*lladauni-agent\[gpu\]"):
        assert choose_attention(q, q, q, AttentionMask.full(4, 4), kernel_device=True)[0] == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_attention(q, q, q, AttentionMask.full(4, 4), kernel_device=True)


def test_the_cpu_path_says_nothing(fresh_choice):
    q = torch.randn(1, 2, 4, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_attention(q, q, q, AttentionMask.full(4, 4))[0] == "sdpa"


def test_kernel_status_reports_each_op_and_the_capabilities(fresh_choice):
    from lladauni.kernels.capability import available

    status = kc.kernel_status()
    assert status == {"attention": "ok", "moe": "ok", "norm": "ok", "routing": "ok", **available()}


def test_kernel_status_without_the_kernels_says_no_triton_and_no_flash(fresh_choice, monkeypatch):
    _kernels_fail_to_import(monkeypatch, "no kernels here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        status = kc.kernel_status()
    assert status == {"attention": "ImportError: no kernels here", "moe": "ImportError: no kernels here",
                      "norm": "ImportError: no kernels here", "routing": "ImportError: no kernels here", "triton": False, "flash_attn": False, "cuda": torch.cuda.is_available()}


def test_a_report_is_logged_as_well_as_warned(fresh_choice, caplog):
    with caplog.at_level("WARNING", logger="lladauni.kernels"), pytest.warns(RuntimeWarning, match="kernel news"):
        kc.report_once("k", "kernel news")
    assert [r.getMessage() for r in caplog.records] == ["kernel news"]


def test_a_static_cache_step_runs_sdpa_on_a_kernel_device(monkeypatch):
    """A denoising step over a static cache comes with its dense mask: ``auto`` runs SDPA there
    (no sync to build the mask, and faster than the kernel at that shape on the H200); a prefill
    or the same step with a plain mask still gets the kernel."""
    monkeypatch.setattr(triton_glue, "can_launch", lambda *t: True)
    B, Hq, Hkv, Q, C, D = 2, 16, 4, 32, 1280, 128
    q = torch.zeros(B, Hq, Q, D)
    k = torch.zeros(B, Hkv, C, D)
    step = AttentionMask.static_block(torch.tensor(1024), Q, torch.arange(C), row_valid=torch.ones(B, C, dtype=torch.bool))
    assert step.prebuilt
    assert choose_attention(q, k, k, step, kernel_device=True)[0] == "sdpa"
    plain = AttentionMask.prefix_and_block(C - Q, Q)
    assert not plain.prebuilt and choose_attention(q, k, k, plain, kernel_device=True)[0] == "triton"
    big_q = torch.zeros(B, Hq, 128, D)
    prefill = AttentionMask.static_block(torch.tensor(0), 128, torch.arange(C))
    assert choose_attention(big_q, k, k, prefill, kernel_device=True)[0] == "triton"
