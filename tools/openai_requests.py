"""OpenAI request bodies -> what the service runs: the JSON body as a schema, the model name,
the messages (text, system prompt, images), and the ``image_generation`` object with the top-level
OpenAI fields as keyword arguments of a backend call."""

from __future__ import annotations

import json
from typing import Any, Optional

from fastapi import Request
from pydantic import ValidationError

from .runtime import MAX_REQUEST_DEPTH, InputError, check_request_data, load_image_ref
from lladauni.agent.wire import WireError, decode_options

from .schemas import ChatRequest, validation_message
from .service import ToolService, parse_size_checked

__all__ = ["KIND", "check_model", "json_body", "model_options", "parse_json", "reasoner_name", "split_messages",
           "validation_message"]


def parse_json(raw: Any, where: str = "") -> Any:
    """The request body (or the JSON text of the form field ``where``) as JSON, checked (nesting,
    lone surrogates) before anything reads it; ``InputError`` (400) saying what is wrong and where."""
    what = where or "the body"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{where or 'body'}: the request nests deeper than {MAX_REQUEST_DEPTH} levels of objects and "
                         "arrays; flatten it (this limit is MAX_REQUEST_DEPTH in lladauni.tools.runtime)") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise InputError(f"{what} is not usable JSON: {exc}") from None
    check_request_data(data, where)
    return data


async def json_body(request: Request, model: type) -> Any:
    data = parse_json(await request.body())
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_message(exc, model)) from None


def reasoner_name(svc: ToolService) -> str:
    """The model id that runs the agent graph rather than one model call."""
    return svc.model_name + "-reasoner"


def check_model(svc: ToolService, name: Optional[str], reasoning: bool = False) -> None:
    if reasoning and name == reasoner_name(svc):
        return
    if name is not None and name not in (svc.model_name, "lladauni", "default"):
        raise InputError(f"unknown model {name!r}; this server serves {svc.model_name!r}", 404)


# ----------------------------------------------------------------------------- option mapping
# the service's default-option kind of each task (chat and understanding share "text")
KIND = {"chat": "text", "understand": "text", "image": "image", "edit": "edit", "interleaved": "interleaved"}
_STEPS = ("steps", "image_steps", "thinking_steps", "decoder_steps")
_TOKENS = ("gen_length", "thinking_gen_length", "text_gen_length")


def model_options(svc: ToolService, task: str, ig: Any, top: Optional[dict] = None) -> dict:
    """The ``image_generation`` object and the top-level OpenAI fields -> keyword arguments of the
    backend call of ``task`` (``lladauni_agent.wire``: SGLang-Omni's names or ours, each value
    checked against its declaration; an unknown key is a 400 naming it), within this server's
    limits, over the service's defaults."""
    given = dict(ig) if isinstance(ig, dict) else (ig.model_dump(exclude_none=True) if ig is not None else {})
    size = given.pop("size", None)
    if size is not None:  # checked now, so a bad "WxH" is reported as a size
        given["image_h"], given["image_w"] = parse_size_checked(size)
        svc.check_size(given["image_h"], given["image_w"])
    where: dict = {}
    try:
        opts = decode_options(task, top or {}, given, loaded_decoder=svc.model.get("decoder_variant"),
                              label=KIND[task], sources=where)
    except WireError as exc:
        raise InputError(str(exc)) from None
    for names, limit in ((_STEPS, svc.limits.max_steps), (_TOKENS, svc.limits.max_tokens)):
        for k in names:
            if k in opts and opts[k] > limit:
                raise InputError(f"{where[k]}={opts[k]} is over this server's limit of {limit}")
    if size is None and ("image_h" in opts or "image_w" in opts):
        default = svc.model.get("default_image_size") or [1024, 1024]
        svc.check_size(opts.get("image_h", default[0]), opts.get("image_w", default[1]))
    return svc.options(KIND[task], **opts)


def split_messages(svc: ToolService, req: ChatRequest) -> tuple[list[dict], Optional[str], list[Any]]:
    """OpenAI messages -> (text messages, system prompt, images). Images come from the user
    messages' parts (``image_url``, or SGLang-Omni's ``image``) or from SGLang-Omni's top-level
    ``images`` list (placed before the last user message's text); both at once is refused."""
    system: Optional[str] = None
    msgs: list[dict] = []
    refs: list[tuple[str, str]] = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list):
            text = "".join(p.text for p in m.content if p.type == "text")
            urls = [p.url for p in m.content if p.type != "text"]
            if urls and m.role != "user":
                raise InputError(f"messages[{i}]: images are only accepted in user messages")
            refs += [(u, f"messages[{i}].image_url") for u in urls]
        else:
            text = m.content or ""
        if m.role in ("system", "developer"):
            system = text if system is None else system + "\n" + text
        else:
            msgs.append({"role": m.role, "content": text})
    if not msgs or msgs[-1]["role"] != "user":
        raise InputError("messages: the last message must be from the user")
    if req.images:
        if refs:
            raise InputError("images: give the input images either in the messages or in the top-level images list, not both")
        refs = [(u, f"images[{i}]") for i, u in enumerate(req.images)]
    if len(refs) > svc.limits.max_images_per_request:
        raise InputError(f"at most {svc.limits.max_images_per_request} images per request")
    return msgs, system, [load_image_ref(u, svc.limits, what) for u, what in refs]
