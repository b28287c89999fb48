"""The fast decoder path: real-valued RoPE equal to the complex form, the cached rotation table,
a DiT step that torch.compile captures whole with no complex tensor, and the compile switch with
its one-time eager fallback. Inductor itself is not run here (over a minute to compile on CPU):
a recording backend stands in for it, and a fake ``torch.compile`` for the switch logic."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lladauni.model_core.decoder import DiTConfig, FlowRenoiseSampler, ImageDecoder, SigVQ, ZImageDiT
from lladauni.model_core.decoder import compiling
from lladauni.model_core.decoder.compiling import COMPILE_ENV, COMPILE_MODE_ENV, CompiledOrEager, compile_mode, compile_wanted
from lladauni.model_core.decoder.dit import ROPE_CACHE_SIZE, RopeEmbedder, apply_rope, rope_positions

CODES = [5, 16383, 0, 77, 1024, 9000]  # a 2 x 3 grid


def complex_rope_reference(x: torch.Tensor, ids: torch.Tensor, theta: float, axes_dims: list[int]) -> torch.Tensor:
    """The former (and official) formula: complex64 tables from torch.polar, complex product in fp32."""
    parts = []
    for axis, d in enumerate(axes_dims):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles = (ids[:, axis].to(torch.float64)[:, None] * inv[None]).float()
        parts.append(torch.polar(torch.ones_like(angles), angles))
    freqs = torch.cat(parts, dim=-1)  # (S, D/2) complex64
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3).type_as(x)


def _tiny_dit(seed: int = 0) -> ZImageDiT:
    model = ZImageDiT(DiTConfig.tiny())
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def _inputs(h: int = 2, w: int = 3, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 4 * h, 4 * w, generator=g)
    feats = torch.randn(batch, 4 * h * w, 32, generator=g)
    return x, torch.linspace(0.1, 0.9, batch), feats


# ---------------------------------------------------------------------------------- RoPE
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 40), cap_len=st.integers(1, 300),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]), heads=st.integers(1, 3),
)
def test_real_rope_equals_the_complex_formula(rows, cols, cap_len, dtype, heads):
    """Grids up to 40 x 40 tokens and captions to 300 (angles up to ~700 rad): the real form is
    the complex product to within fp32 rounding (measured: bit-identical on CPU)."""
    axes, theta = [32, 48, 48], 256.0
    img_ids, cap_ids = rope_positions(rows, cols, cap_len)
    ids = torch.cat([img_ids, cap_ids])
    x = torch.randn(2, ids.shape[0], heads, sum(axes), generator=torch.Generator().manual_seed(rows * 997 + cols)).to(dtype)
    table = RopeEmbedder(theta, axes)(ids)
    assert table.dtype == torch.float32 and table.shape == (2, ids.shape[0], sum(axes))
    got = apply_rope(x, table)
    want = complex_rope_reference(x, ids, theta, axes)
    assert got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=2e-6, rtol=2e-6)
    else:  # both round the same fp32 values to bf16; one ulp where fp32 rounding differed
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=8e-3)


def test_rope_table_is_cached_per_grid_and_bounded():
    model = _tiny_dit()
    a = model.rope_table(2, 3, 24, torch.device("cpu"))
    assert model.rope_table(2, 3, 24, torch.device("cpu")) is a
    assert model.rope_table(2, 3, 20, torch.device("cpu")) is a  # same padded caption length (32)
    assert model.rope_table(3, 2, 24, torch.device("cpu")) is not a
    for n in range(1, ROPE_CACHE_SIZE + 5):
        model.rope_table(1, n, 24, torch.device("cpu"))
    assert len(model.rope_cache) == ROPE_CACHE_SIZE


# ---------------------------------------------------------------------------------- capture
class GraphRecorder:
    """A torch.compile backend that keeps each FX graph and runs it as it is."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _complex_nodes(gm: torch.fx.GraphModule) -> list[str]:
    found = []
    for node in gm.graph.nodes:
        val = node.meta.get("example_value", node.meta.get("val"))
        if isinstance(val, torch.Tensor) and val.is_complex() or "complex" in str(node.target):
            found.append(node.name)
    return found


def test_dit_step_compiles_whole_without_complex_tensors():
    """fullgraph=True: a graph break would raise (and fall back, failing ``is_compiled``)."""
    model = _tiny_dit()
    x, t, feats = _inputs()
    with torch.no_grad():
        eager = model(x, t, feats)
        rec = GraphRecorder()
        model.set_compile("default", fullgraph=True, backend=rec)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = model(x, t, feats)
            again = model(x, t.flip(0), feats)  # new time values: same graph, no recompile
    assert model.is_compiled and len(rec.graphs) == 1
    assert _complex_nodes(rec.graphs[0]) == []
    assert torch.equal(got, eager)
    assert not torch.equal(again, eager)
    model.set_compile(None)
    assert not model.is_compiled


# ---------------------------------------------------------------------------------- switch
def test_compile_switch_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.delenv(COMPILE_MODE_ENV, raising=False)
    assert compile_wanted(None, "cpu") is False and compile_wanted(None, "cuda") is True
    assert compile_wanted(True, "cpu") is True and compile_wanted(False, "cuda") is False
    monkeypatch.setenv(COMPILE_ENV, "eager")
    assert compile_wanted(None, "cuda") is False and compile_wanted(True, "cuda") is True
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert compile_wanted(None, "cpu") is True and compile_wanted(False, "cpu") is False
    monkeypatch.setenv(COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match=r"LLADAUNI_DECODER_COMPILE='sometimes': use 1/on .* 0/off/eager"):
        compile_wanted(None, "cpu")
    with pytest.raises(TypeError, match="compile='yes'"):
        compile_wanted("yes", "cpu")
    assert compile_mode() == "default"
    monkeypatch.setenv(COMPILE_MODE_ENV, "reduce-overhead")
    assert compile_mode() == "reduce-overhead" and compile_mode("default") == "default"
    monkeypatch.setenv(COMPILE_MODE_ENV, "turbo")
    with pytest.raises(ValueError, match=r"LLADAUNI_DECODER_COMPILE_MODE='turbo': choose one of default, reduce-overhead"):
        compile_mode()


class FakeCompile:
    """Stands in for torch.compile: counts calls of the functions it 'compiles'."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.modes: list[str] = []

    def __call__(self, fn, *, mode=None, **kw):
        self.modes.append(mode)
        name = fn.__name__

        def run(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)

        return run


@pytest.fixture(scope="module")
def parts():
    from diffusers import AutoencoderKL

    from lladauni.model_core.decoder import VAEDecoder
    from lladauni.model_core.decoder.testing import tiny_vae_config

    sig = SigVQ(16384, 32)
    sig.init_weights(torch.Generator().manual_seed(3))
    vae = AutoencoderKL.from_config({k: v for k, v in tiny_vae_config().items() if not k.startswith("_")}).eval()
    return sig.eval(), _tiny_dit(), VAEDecoder(vae)


def test_image_decoder_is_eager_on_cpu_and_compiles_both_models_when_asked(parts, monkeypatch):
    sig, dit, vae = parts
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.delenv(COMPILE_MODE_ENV, raising=False)
    fake = FakeCompile()
    monkeypatch.setattr(torch, "compile", fake)
    dec = ImageDecoder(sig, dit, vae, FlowRenoiseSampler(num_steps=3))
    assert not dec.compiled and dit.compiled_core is None and vae.compiled_decode is None
    eager = dec.decode(CODES, 2, 3, seed=4)
    monkeypatch.setenv(COMPILE_ENV, "on")
    dec.set_compile()
    assert dec.compiled and fake.modes == ["default"] * 2
    got = dec.decode(CODES, 2, 3, seed=4)
    assert fake.calls == {"forward_core": 3, "decode_scaled": 1}
    assert got.tobytes() == eager.tobytes()
    vae.set_tiling(True)  # tiled decodes stay eager
    dec.decode(CODES, 2, 3, seed=4)
    assert fake.calls == {"forward_core": 6, "decode_scaled": 1}
    vae.set_tiling(False)
    dec.set_compile(False)
    assert not dec.compiled and vae.compiled_decode is None


def test_failed_compile_warns_once_and_runs_eagerly(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("Dynamo is not supported here")

    monkeypatch.setattr(torch, "compile", broken)
    msg = r"torch.compile of the decoder DiT failed \(RuntimeError: Dynamo is not supported here\).*LLADAUNI_DECODER_COMPILE=0"
    with pytest.warns(RuntimeWarning, match=msg):
        model = _tiny_dit()
        model.set_compile("default")
    assert not model.is_compiled
    x, t, feats = _inputs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(x, t, feats).shape == x.shape


def test_compile_failing_on_first_run_falls_back_once(monkeypatch):
    runs = []

    def compiles_then_fails(fn, **kw):
        def run(*args):
            runs.append(1)
            raise RuntimeError("InductorError: no C++ compiler\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", compiles_then_fails)
    fn = CompiledOrEager(lambda a: a * 2, name="decoder VAE", mode="default")
    with pytest.warns(RuntimeWarning, match=r"decoder VAE failed \(RuntimeError: InductorError: no C\+\+ compiler\); running it eagerly"):
        assert fn(torch.ones(2)).tolist() == [2.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn(torch.ones(1)).tolist() == [2.0]
    assert len(runs) == 1 and not fn.active and fn.error.startswith("RuntimeError")


def test_out_of_memory_is_not_taken_for_a_compile_failure(monkeypatch):
    def oom(fn, **kw):
        def run(*args):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

        return run

    monkeypatch.setattr(torch, "compile", oom)
    fn = CompiledOrEager(lambda a: a, name="decoder DiT", mode="default")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fn(torch.ones(1))
    assert fn.active


def test_cuda_graph_modes_mark_steps_and_copy_outputs(monkeypatch):
    buffer = torch.zeros(3)

    def graphed(fn, **kw):
        def run(a):
            buffer.copy_(fn(a))  # a replay writes into the graph's own output buffer
            return buffer

        return run

    marks = []
    monkeypatch.setattr(torch, "compile", graphed)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    fn = CompiledOrEager(lambda a: a + 1, name="decoder DiT", mode="reduce-overhead")
    first = fn(torch.zeros(3))
    second = fn(torch.ones(3))
    assert first.tolist() == [1.0] * 3 and second.tolist() == [2.0] * 3 and len(marks) == 2
    plain = CompiledOrEager(lambda a: a + 1, name="decoder DiT", mode="max-autotune-no-cudagraphs")
    assert plain(torch.zeros(3)) is buffer and len(marks) == 2
    assert compiling.DEFAULT_COMPILE_MODE == "default"
