"""An independent, deliberately naive LLaDA2.0-Uni backbone for parity tests.

Written from MODEL_SPEC §4.2 without any of model_core's modules: it reads the *published*
per-expert tensor names, loops over tokens for routing and experts, loops over heads for
attention with an explicit additive mask, and rotates RoPE pairs by explicit angles.
Slow, fp32, small inputs only.
"""

from __future__ import annotations

import math

import torch


def _rms(x, w, eps):
    x32 = x.float()
    return w * (x32 / torch.sqrt((x32 * x32).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(x, pos, rotary_dim, base):
    """x (T, D), pos (T,): pair (i, i + R/2) rotated by pos * base^(-2i/R) for i < R/2."""
    out = x.clone()
    half = rotary_dim // 2
    for i in range(half):
        theta = pos.double() * (base ** (-(2.0 * i) / rotary_dim))
        c, s = torch.cos(theta).float(), torch.sin(theta).float()
        a, b = x[:, i], x[:, i + half]
        out[:, i] = a * c - b * s
        out[:, i + half] = b * c + a * s
    return out


def _silu(x):
    return x * torch.sigmoid(x)


def _route(h, cfg, gate_w, bias):
    """Per token: sigmoid scores, group-limited selection with bias, unbiased normalised weights."""
    scores = torch.sigmoid(h.float() @ gate_w.float().T)
    biased = scores + bias.float()
    E, G = cfg["num_experts"], cfg["n_group"]
    per = E // G
    group_score = [sorted(biased[g * per:(g + 1) * per].tolist(), reverse=True)[:2] for g in range(G)]
    group_score = [a + b for a, b in group_score]
    keep_groups = sorted(range(G), key=lambda g: -group_score[g])[: cfg["topk_group"]]
    cand = [e for g in keep_groups for e in range(g * per, (g + 1) * per)]
    chosen = sorted(cand, key=lambda e: -biased[e].item())[: cfg["num_experts_per_tok"]]
    w = torch.stack([scores[e] for e in chosen])
    if len(chosen) > 1:
        w = w / (w.sum() + 1e-20)
    return chosen, w * cfg["routed_scaling_factor"]


def reference_logits(sd: dict, cfg: dict, input_ids: torch.Tensor, position_ids: torch.Tensor,
                     allowed: torch.Tensor) -> torch.Tensor:
    """sd: published-name state dict (fp32). input_ids, position_ids: (T,). allowed: (T, T) bool.

    Returns (T, V) fp32 logits; rows with no allowed key get a zero attention output.
    """
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    rd = int(hd * cfg["partial_rotary_factor"])
    base = cfg["rope_parameters"]["rope_theta"]
    T = input_ids.shape[0]
    x = sd["model.word_embeddings.weight"][input_ids]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        h = _rms(x, sd[p + "input_layernorm.weight"], eps)
        qkv = h @ sd[p + "attention.query_key_value.weight"].T
        heads = qkv.view(T, nh + 2 * nkv, hd)
        attn_out = torch.zeros(T, nh, hd)
        ks, vs = [], []
        for j in range(nkv):
            k = _rms(heads[:, nh + j], sd[p + "attention.key_layernorm.weight"], eps)
            ks.append(_rope(k, position_ids, rd, base))
            vs.append(heads[:, nh + nkv + j])
        for i in range(nh):
            q = _rope(_rms(heads[:, i], sd[p + "attention.query_layernorm.weight"], eps), position_ids, rd, base)
            j = i // (nh // nkv)
            s = (q @ ks[j].T) / math.sqrt(hd)
            s = s + torch.where(allowed, 0.0, float("-inf"))
            for t in range(T):
                if allowed[t].any():
                    attn_out[t, i] = torch.softmax(s[t], -1) @ vs[j]
        x = x + attn_out.reshape(T, nh * hd) @ sd[p + "attention.dense.weight"].T
        h = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        if L < cfg["first_k_dense_replace"]:
            y = (_silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T)) @ sd[p + "mlp.down_proj.weight"].T
        else:
            y = torch.zeros_like(h)
            for t in range(T):
                chosen, w = _route(h[t], cfg, sd[p + "mlp.gate.weight"], sd[p + "mlp.gate.expert_bias"])
                for e, we in zip(chosen, w):
                    q = p + f"mlp.experts.{e}."
                    a = _silu(h[t] @ sd[q + "gate_proj.weight"].T) * (h[t] @ sd[q + "up_proj.weight"].T)
                    y[t] += we * (a @ sd[q + "down_proj.weight"].T)
            s = p + "mlp.shared_experts."
            y = y + (_silu(h @ sd[s + "gate_proj.weight"].T) * (h @ sd[s + "up_proj.weight"].T)) @ sd[s + "down_proj.weight"].T
        x = x + y
    x = _rms(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T
