"""Block-masked GQA attention: reference (fp32), Triton kernel, host op and benchmark."""

from .op import attention, block_attention, flash_attention
from .reference import attention_reference

__all__ = ["attention", "block_attention", "flash_attention", "attention_reference"]
