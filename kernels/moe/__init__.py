"""Fused MoE: reference (fp32), Triton kernels, host op and benchmark."""

from .op import fused_moe, unsupported
from .reference import dequantize_blockwise, moe_reference, quantize_blockwise, quantize_experts

__all__ = ["dequantize_blockwise", "fused_moe", "moe_reference", "quantize_blockwise", "quantize_experts", "unsupported"]
