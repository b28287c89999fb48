"""Triton kernels beside plain PyTorch references (fused MoE, attention, norms).

Empty until the kernels issue lands; the backbone's backend switch
(``model_core.layers.attention.register_attention_backend``,
``model_core.moe.register_moe_backend``) is where they plug in.
"""

__all__: list[str] = []
