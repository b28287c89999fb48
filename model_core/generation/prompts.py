"""Prompt builders for every task (MODEL_SPEC §4.4), as the official code tokenizes them.

The official code tokenizes each segment on its own and concatenates the id lists, so no BPE
merge crosses a segment boundary: ``"<role>SYSTEM</role> {system} <role>HUMAN</role>"`` is one
segment, the user text another, ``"<role>ASSISTANT</role>"`` a third. Image blocks are
``<|image|> <|reserved_token_h|> <|reserved_token_w|> <boi>`` + h·w code ids + ``<|/image|>``.
The chat form for multi-turn and multi-image conversations follows SGLang-Omni: one string
``"<role>SYSTEM</role> {system} "`` then ``{role tag}{image blocks}{text}`` per message, then
``"<role>ASSISTANT</role>"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch

from ..tokenizer import TextTokenizer

__all__ = ["ImageCodes", "ChatMessage", "PromptBuilder", "SYSTEM_PROMPTS", "UNCONDITION"]

UNCONDITION = "<uncondition>"
SYSTEM_PROMPTS = {
    "t2i": "You are a text-to-image generation assistant.",
    "t2i_thinking": "You are a text-to-image generation assistant with a thinking process.",
    "edit": "You are an image editing assistant.",
    "chat": "You are a multimodal understanding assistant.",
    "interleaved": "You are a interleaved generation assistant.",  # sic, as SGLang-Omni has it
}


@dataclass(frozen=True)
class ImageCodes:
    """An encoded image: raw VQ codes 0..16383 in raster order on an h x w grid."""

    codes: torch.Tensor
    h: int
    w: int

    def __post_init__(self) -> None:
        c = torch.as_tensor(self.codes)
        if c.dim() != 1 or c.numel() != self.h * self.w:
            raise ValueError(f"image has {c.numel()} codes for a {self.h}x{self.w} grid")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) > 16383):
            raise ValueError("image codes must lie in 0..16383")
        object.__setattr__(self, "codes", c.long())


@dataclass
class ChatMessage:
    role: Literal["user", "assistant", "system"]
    text: str = ""
    images: list[ImageCodes] = field(default_factory=list)


class PromptBuilder:
    """Token-id prompts for one checkpoint's tokenizer."""

    def __init__(self, tokenizer: TextTokenizer, image_token_offset: int) -> None:
        self.tok = tokenizer
        self.offset = image_token_offset
        sp = tokenizer.special
        self.soi, self.eoi, self.boi = sp.image_start, sp.image_end, sp.boi

    # ------------------------------------------------------------------ pieces
    def header(self, h: int, w: int) -> list[int]:
        """``<|image|> <|reserved_token_h|> <|reserved_token_w|> <boi>``. This is where the size-token
        rule lives: an h x w grid whose side has no size token in this tokenizer (with the published
        one: odd sides below 36, sides below 8 or above 255) raises ValueError naming the grid."""
        try:
            return self.tok.image_header(h, w)
        except ValueError as exc:
            raise ValueError(f"an image grid of {h}x{w} codes cannot be written in a prompt: {exc}") from None

    def image_block(self, image: ImageCodes) -> list[int]:
        return self.header(image.h, image.w) + (image.codes + self.offset).tolist() + [self.eoi]

    def official_chat(self, system: str, user_ids: Sequence[int]) -> list[int]:
        """The official ``_build_chat``: three separately tokenized pieces."""
        return self.tok.encode_segments([f"<role>SYSTEM</role> {system} <role>HUMAN</role>", list(user_ids), "<role>ASSISTANT</role>"])

    # ------------------------------------------------------------------ text to image
    def text_to_image(self, prompt: str, h: int, w: int) -> tuple[list[int], list[int]]:
        """(conditional, null) prompts of normal T2I; both end with the image header."""
        system = SYSTEM_PROMPTS["t2i"]
        cond = self.official_chat(system, self.tok.encode(prompt)) + self.header(h, w)
        null = self.official_chat(system, self.tok.encode(UNCONDITION)) + self.header(h, w)
        return cond, null

    def thinking_phase1(self, prompt: str) -> list[int]:
        """Thinking T2I phase 1: the model writes its reasoning and then the header itself."""
        return self.official_chat(SYSTEM_PROMPTS["t2i_thinking"], self.tok.encode(prompt))

    def thinking_null(self, h: int, w: int) -> list[int]:
        return self.official_chat(SYSTEM_PROMPTS["t2i_thinking"], self.tok.encode(UNCONDITION)) + self.header(h, w)

    # ------------------------------------------------------------------ understanding
    def understanding(
        self, image: ImageCodes, question: str, template: Literal["official", "chat"] = "official", system: Optional[str] = None
    ) -> list[int]:
        """official: header + codes + <|/image|> + question, no roles at all (``understand_image``);
        chat: the SGLang-Omni chat form with one user message."""
        if template == "official":
            return self.image_block(image) + (self.tok.encode(question) if question else [])
        if template == "chat":
            return self.chat([ChatMessage("user", question, [image])], system=system)
        raise ValueError(f"template={template!r}: 'official' or 'chat'")

    # ------------------------------------------------------------------ editing
    def editing(
        self, sources: Sequence[ImageCodes], instruction: str, out_h: int, out_w: int
    ) -> tuple[list[int], list[int], list[int]]:
        """(full, no_text, no_image) prompts of the official ``edit_image``, generalised to
        several reference images (each its own block, in order)."""
        if not sources:
            raise ValueError("editing needs at least one source image")
        if not instruction.strip():
            raise ValueError("editing needs a non-empty instruction")
        system_ids = self.tok.encode(f"<role>SYSTEM</role> {SYSTEM_PROMPTS['edit']} <role>HUMAN</role>")
        asst = self.tok.encode("<role>ASSISTANT</role>")
        blocks = [i for s in sources for i in self.image_block(s)]
        instr = self.tok.encode(instruction)
        head = self.header(out_h, out_w)
        full = system_ids + blocks + instr + asst + head
        no_text = system_ids + blocks + self.tok.encode(UNCONDITION) + asst + head
        no_image = system_ids + [self.soi] + instr + asst + head
        return full, no_text, no_image

    # ------------------------------------------------------------------ chat
    def chat(self, messages: Sequence[ChatMessage], system: Optional[str] = None, kind: str = "chat") -> list[int]:
        """SGLang-Omni chat form: images at the start of their message, ends with the assistant tag."""
        if not messages:
            raise ValueError("chat needs at least one message")
        system = system if system is not None else next((m.text for m in messages if m.role == "system"), SYSTEM_PROMPTS[kind])
        ids = self.tok.encode(f"<role>SYSTEM</role> {system} ")
        for m in messages:
            if m.role == "system":
                continue
            if m.role not in ("user", "assistant"):
                raise ValueError(f"message role {m.role!r}: 'user', 'assistant' or 'system'")
            ids += self.tok.encode("<role>HUMAN</role>" if m.role == "user" else "<role>ASSISTANT</role>")
            for image in m.images:
                ids += self.image_block(image)
            if m.text:
                ids += self.tok.encode(m.text)
        return ids + self.tok.encode("<role>ASSISTANT</role>")
