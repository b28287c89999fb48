"""Block-masked GQA attention: reference (fp32), Triton kernel, host op and benchmark."""

from .op import HAS_FLASH_ATTN, block_attention, flash_attention, flash_unsupported, unsupported
from .reference import attention_reference

__all__ = ["HAS_FLASH_ATTN", "attention_reference", "block_attention", "flash_attention", "flash_unsupported", "unsupported"]
