"""The Triton backends inside the backbone: pulled by model_core, parity with the PyTorch backends on
the tiny model (prefill and a cached CFG block step), and CUDA-graph capture on a GPU."""

from __future__ import annotations

import pytest
import torch

from tests.kernel_fixtures import BF16, DEVICE, F32, assert_close, needs_triton, requires_cuda

from lladauni.model_core.backbone import LLaDA2Backbone
from lladauni.model_core.config import BackboneConfig
from lladauni.model_core.layers.attention import AttentionMask, attention_backends
from lladauni.model_core.moe import moe_backends

pytestmark = needs_triton


def _model(dtype: torch.dtype, config: BackboneConfig | None = None) -> LLaDA2Backbone:
    model = LLaDA2Backbone(config or BackboneConfig.tiny())
    model.init_weights(torch.Generator().manual_seed(0), std=0.1)
    return model.to(device=DEVICE, dtype=dtype).eval()


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_norm_kernels_inside_the_backbone(dtype, monkeypatch):
    """norm='triton' runs the fused kernels (RMSNorm, residual-add + RMSNorm, QK-norm + RoPE; each
    called) and gives the torch path's logits; 'auto' on CPU stays on torch."""
    from lladauni.kernels.norm import op as norm_op

    model = _model(dtype)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    calls = {"rms_norm": 0, "qk_norm_rope": 0}
    for name in calls:
        real = getattr(norm_op, name)

        def spy(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(norm_op, name, spy)
    with torch.no_grad():
        ref = model.set_backends(norm="torch")(ids, block_size=8).logits
        assert calls == {"rms_norm": 0, "qk_norm_rope": 0}
        got = model.set_backends(norm="triton")(ids, block_size=8).logits
    L = model.config.num_hidden_layers
    assert calls == {"rms_norm": 2 * L + 1, "qk_norm_rope": L}  # input, post-attention (+residual), final
    assert_close(got, ref, "backbone", "torch", dtype)
    with pytest.raises(ValueError, match="norm backend"):
        model.set_backends(norm="fast")


def test_routing_kernel_inside_the_backbone(monkeypatch):
    """routing='triton' runs the fused router in every MoE layer and picks the torch Router's
    experts (fp32; the weights within 1e-6)."""
    from lladauni.kernels.routing import op as routing_op
    from lladauni.model_core.moe import Router

    model = _model(F32)
    router = next(m for m in model.modules() if isinstance(m, Router))
    x = torch.randn(40, model.config.hidden_size, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    calls = []
    real = routing_op.group_topk_route
    monkeypatch.setattr(routing_op, "group_topk_route", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        model.set_backends(routing="torch")
        ids, w, logits = router(x)
        assert not calls
        model.set_backends(routing="triton")
        kids, kw, klogits = router(x)
    assert calls and torch.equal(kids, ids) and torch.equal(klogits, logits)
    torch.testing.assert_close(kw, w, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="routing backend"):
        model.set_backends(routing="fast")


def test_model_core_lists_the_kernel_backends():
    """With Triton installed, model_core pulls the kernels: 'triton' is a named backend of both."""
    assert "triton" in attention_backends() and "triton" in moe_backends()
    assert attention_backends() == sorted(set(attention_backends()))  # asking twice adds nothing


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_tiny_backbone_prefill_and_cfg_block_step(dtype):
    model = _model(dtype)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 1000, (2, 40), generator=g).to(DEVICE)
    block = torch.randint(0, 1000, (2, 8), generator=g).to(DEVICE)
    valid = torch.ones(2, 48, dtype=torch.bool, device=DEVICE)
    valid[1, :12] = False  # the CFG branch's left padding
    outs = {}
    with torch.no_grad():
        for backends in (("sdpa", "loop", "torch"), ("triton", "triton", "triton")):
            model.set_backends(attn=backends[0], moe=backends[1], norm=backends[2], routing=backends[2])
            pre = model(prompt, mask=AttentionMask.block_causal(40, 8, key_valid=valid[:, :40], device=DEVICE),
                        return_kv=True, block_size=8)
            step = model(block, torch.arange(40, 48, device=DEVICE), AttentionMask.prefix_and_block(40, 8, key_valid=valid, device=DEVICE),
                         past=pre.kv, check_inputs=False)
            outs[backends[0]] = (pre.logits, step.logits)
    for a, b in zip(outs["triton"], outs["sdpa"]):
        assert_close(a, b, "backbone", "torch", dtype)


@pytest.mark.gpu
@requires_cuda
def test_block_step_cuda_graph_capture():
    """A whole cached block step with the Triton backends replays from a CUDA graph. In fp32: a
    random model in bf16 is chaotic (routing flips amplify layer by layer), so bf16 Triton vs bf16
    SDPA can differ for no kernel bug; the kernels' bf16 rounding is checked per operation."""
    cfg = BackboneConfig.tiny().replace(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                                        num_experts=64, n_group=8, topk_group=4, num_experts_per_tok=8,
                                        moe_intermediate_size=128, num_hidden_layers=4)
    model = _model(F32, cfg).set_backends(attn="triton", moe="triton", norm="triton")
    P, Q = 96, 32
    with torch.no_grad():
        pre = model(torch.randint(0, 1000, (1, P), device=DEVICE), return_kv=True)
        ids = torch.randint(0, 1000, (1, Q), device=DEVICE)
        pos = torch.arange(P, P + Q, device=DEVICE)
        mask = AttentionMask.prefix_and_block(P, Q, device=DEVICE)
        step = lambda: model(ids, pos, mask, past=pre.kv, check_inputs=False).logits  # noqa: E731
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        ids.copy_(torch.randint(0, 1000, (1, Q), device=DEVICE))
        graph.replay()
        torch.cuda.synchronize()
        model.set_backends(attn="sdpa", moe="loop", norm="torch")
        ref = model(ids, pos, mask, past=pre.kv, check_inputs=False).logits
    assert_close(out, ref, "backbone", "torch", F32)
