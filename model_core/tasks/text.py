"""Text out: chat (optionally about images) and image understanding."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..generation.prompts import ChatMessage, ImageCodes
from ..generation.results import GenerationStats, TextResult
from ..options import ChatOptions, SamplingOptions, UnderstandOptions, sampler_config
from .common import Progress, as_codes, check_length, generator_for, is_encoded, run

__all__ = ["chat", "understand", "messages_of"]


def chat(pipe: Any, messages: Any, images: Sequence[Any], system: Optional[str], o: ChatOptions,
         generator: Optional[torch.Generator] = None, progress: Optional[Progress] = None) -> TextResult:
    """Text chat. template ``chat_template`` renders the checkpoint's chat template (text only);
    ``omni`` is the SGLang-Omni multimodal form; ``auto`` picks ``omni`` when there are images."""
    msgs = _encode_images(pipe, messages_of(messages, images))
    has_images = any(m.images for m in msgs)
    template = ("omni" if has_images else "chat_template") if o.template == "auto" else o.template
    if template == "chat_template":
        if has_images:
            raise ValueError("the checkpoint's chat template has no image support; use template='omni'")
        rendered = [{"role": m.role, "content": m.text} for m in msgs]
        if system is not None:
            rendered = [{"role": "system", "content": system}] + [r for r in rendered if r["role"] != "system"]
        prompt = pipe.tokenizer.encode(pipe.tokenizer.apply_chat_template(rendered))
    else:
        prompt = pipe.prompts.chat(msgs, system=system)
    return answer(pipe, prompt, o, o.gen_length, generator, progress)


def understand(pipe: Any, image: Any, question: str, o: UnderstandOptions, generator: Optional[torch.Generator] = None,
               progress: Optional[Progress] = None) -> TextResult:
    """Answer a question about an image; returns the answer only (the official code returns
    question + answer)."""
    codes = as_codes(pipe, image, "understand")
    prompt = pipe.prompts.understanding(codes, question, template=o.template)
    return answer(pipe, prompt, o, o.gen_length, generator, progress)


def answer(pipe: Any, prompt: list[int], o: SamplingOptions, gen_length: int, generator: Optional[torch.Generator],
           progress: Optional[Progress]) -> TextResult:
    if not prompt:
        raise ValueError("empty prompt")
    check_length(pipe, len(prompt), gen_length, "text generation")
    stats = GenerationStats()
    r = run(pipe, prompt, sampler_config(o, gen_length=gen_length), generator_for(pipe, o.seed, generator), progress, stats)
    ids = r.generated.tolist()
    return TextResult(pipe.tokenizer.decode(ids, skip_special_tokens=True), ids, prompt, stats, r.trace)


def messages_of(messages: Any, images: Sequence[Any]) -> list[ChatMessage]:
    """A string or [{"role", "content"}] / ChatMessage list -> ChatMessages, with ``images``
    placed before the last user message's own."""
    if isinstance(messages, str):
        messages = [ChatMessage("user", messages)]
    out: list[ChatMessage] = []
    for m in messages:
        if isinstance(m, ChatMessage):
            out.append(ChatMessage(m.role, m.text, list(m.images)))
        elif isinstance(m, dict) and isinstance(m.get("content", ""), str):
            out.append(ChatMessage(m.get("role", "user"), m.get("content", "")))
        else:
            raise ValueError(f"message {m!r}: expected a ChatMessage or {{'role': ..., 'content': str}}")
    if not out:
        raise ValueError("no messages")
    if images:
        last_user = max((i for i, m in enumerate(out) if m.role == "user"), default=None)
        if last_user is None:
            raise ValueError("images given but no user message to attach them to")
        out[last_user].images = list(images) + out[last_user].images
    return out


def _encode_images(pipe: Any, msgs: list[ChatMessage]) -> list[ChatMessage]:
    """Encode raw images (PIL, paths, bytes, arrays) of all messages together, so that several
    images get the several-image budget; already-encoded ones are kept."""
    raw = [(mi, ii) for mi, m in enumerate(msgs) for ii, im in enumerate(m.images) if not is_encoded(im)]
    if raw:
        total = sum(len(m.images) for m in msgs)
        try:
            toks = pipe.image_tokenizer.encode([msgs[mi].images[ii] for mi, ii in raw], purpose="understand",
                                               multi_image=total > 1)
        except ValueError as exc:
            raise ValueError(f"cannot encode the image: {exc}") from None
        for (mi, ii), t in zip(raw, toks):
            msgs[mi].images[ii] = ImageCodes(t.codes, t.h, t.w)
    for m in msgs:
        m.images = [as_codes(pipe, im, "understand") for im in m.images]
    return msgs
