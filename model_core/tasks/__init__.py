"""One pipeline per task (diffusers' shape): each module checks its inputs, builds the prompt,
turns the options into the sampler's config, samples and decodes. ``LLaDAUni`` holds the
components and calls them."""

from .edit import edit_image
from .image import generate_image
from .interleaved import generate_interleaved
from .text import chat, understand

__all__ = ["chat", "edit_image", "generate_image", "generate_interleaved", "understand"]
