"""Typed request schemas shared by the HTTP server, the MCP server and the LangChain tools.

Model options travel in ``image_generation`` as SGLang-Omni names them (``dllm_steps``,
``decoder_steps``, ``cfg_scale``, ``mode``, ``seed``, ``image_h``/``image_w`` ...), so one client
(e.g. ``lladauni_agent.HTTPBackend``) works against both servers.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lladauni.agent.option_models import StrictModel, options_model
from lladauni.model_core.options import MAX_SEED, TASK_OPTIONS, option_specs

from .runtime import Limits

__all__ = ["ChatRequest", "EditImageArgs", "GenerateImageArgs", "ImageGenerationOptions", "ImageItemPart", "ImagePart", "ImagesRequest",
           "OPENAI_UNSUPPORTED", "REPLY_FIELDS", "ReasonArgs", "TOOL_OPTIONS", "UnderstandArgs", "WorkflowArgs", "WorkflowRunRequest", "parse_size",
           "unknown_names", "validation_message"]

_Strict = StrictModel  # unknown keys are refused
_SEED = {"ge": 0, "le": MAX_SEED, "description": f"random seed, 0 to {MAX_SEED}"}


# ---------------------------------------------------------------------------- error messages
def _where(loc: tuple) -> str:
    """A pydantic location as the request writes it: ``messages[0].content[1].text`` (the tags
    pydantic adds for union members, such as ``list[...]``, left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" not in str(part) and str(part) not in ("str", "function-after", "function-before"):
            out += f".{part}" if out else str(part)
    return out


def validation_message(exc: ValidationError, model: Optional[type] = None) -> str:
    """The first errors of ``exc`` as "field: problem"; an unknown key is named as one, with the
    closest field of ``model`` (for keys at its top level) as a did-you-mean."""
    parts = []
    for e in exc.errors()[:5]:
        where = _where(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and model is not None and len(e["loc"]) == 1:
            parts.append(unknown_names([e["loc"][0]], list(model.model_fields)))
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def unknown_names(names: list, choices: list[str], what: str = "field") -> str:
    """"unknown field 'promt' (did you mean 'prompt'?)", one clause per name, the hint from the
    workflow loader's ``did_you_mean``."""
    from lladauni.agent.workflows.loader import did_you_mean

    return "; ".join(f"unknown {what} {n!r} ({did_you_mean(n, choices)})" for n in names)


class ImageGenerationOptions(BaseModel):
    """The ``image_generation`` object (SGLang-Omni's): ``mode`` decides the task; every other key
    is checked against that task's options when the request is mapped (``lladauni_agent.wire``:
    SGLang-Omni's names such as ``dllm_steps`` / ``decode_mode``, or ours), so an unknown key is a
    400 naming it, never dropped. ``size`` ("WxH") is ours, beside ``image_h`` / ``image_w``."""

    model_config = ConfigDict(extra="allow")
    mode: Optional[Literal["normal", "thinking", "interleaved"]] = None


def parse_size(size: str) -> tuple[int, int]:
    """``"1024x768"`` -> (h=768, w=1024) as OpenAI writes sizes (width x height)."""
    try:
        w, h = (int(x) for x in size.lower().split("x"))
    except (AttributeError, ValueError):
        raise ValueError(f"size={size!r}: expected WIDTHxHEIGHT such as '1024x1024'") from None
    return h, w


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Optional[str] = None


class ImagePart(_Strict):
    """OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}``; SGLang-Omni also takes the URL
    as a bare string."""

    type: Literal["image_url"]
    image_url: Union[ImageURL, str]

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class ImageItemPart(_Strict):
    """SGLang-Omni's ``{"type": "image", "image": URL}``."""

    type: Literal["image"]
    image: str

    @property
    def url(self) -> str:
        return self.image


Part = Annotated[Union[TextPart, ImagePart, ImageItemPart], Field(discriminator="type")]

# the fields of an assistant reply (OpenAI's and this server's own) that a client sends back with
# the conversation; earlier output, so they change nothing and are dropped
REPLY_FIELDS = ("refusal", "annotations", "audio", "tool_calls", "function_call", "images", "image", "segments", "trace")


class Message(_Strict):
    """One chat message. An assistant message may carry the reply's other fields (``REPLY_FIELDS``,
    dropped); any other unknown field is refused by name."""

    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[Part], None] = None
    name: Optional[str] = Field(default=None, description="OpenAI's participant name (changes nothing here)")

    @model_validator(mode="before")
    @classmethod
    def _replayed_reply(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("role") == "assistant":
            return {k: v for k, v in data.items() if k not in REPLY_FIELDS}
        return data


class StreamOptions(_Strict):
    include_usage: bool = False


# OpenAI chat fields this server cannot honour -> what they would ask for. Each is accepted only
# at its neutral value (null, false, 0, empty), which is what some clients always send.
OPENAI_UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "parallel_tool_calls": "tool calling", "response_format": "structured output",
    "stop": "stop sequences", "logprobs": "log probabilities", "top_logprobs": "log probabilities",
    "logit_bias": "logit bias", "presence_penalty": "a presence penalty", "frequency_penalty": "a frequency penalty",
    "audio": "audio output", "prediction": "predicted outputs", "reasoning_effort": "a reasoning effort",
    "web_search_options": "web search", "verbosity": "a verbosity level",
}


class ChatRequest(_Strict):
    """``POST /v1/chat/completions``. ``modalities`` ["text"] answers in text (with images: image
    understanding); ["image"] draws (with an input image: edits); ["text", "image"] thinks then
    draws, or writes interleaved text and images with ``image_generation.mode="interleaved"``.
    An unknown field is refused by name; OpenAI's bookkeeping fields (``user``, ``metadata``,
    ``store``, ``service_tier``) change nothing; the ones in ``OPENAI_UNSUPPORTED`` are accepted
    only at their neutral value."""

    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    modalities: list[Literal["text", "image"]] = ["text"]
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = None  # ranges: the task's options (model_core.options)
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    seed: Optional[int] = Field(default=None, **_SEED)
    n: int = Field(default=1, ge=1, le=1)
    images: Optional[list[str]] = Field(default=None, description="SGLang-Omni's top-level input images (URLs or paths)")
    image_generation: Optional[ImageGenerationOptions] = None
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _neutral_only(cls, data: Any) -> Any:
        """Drop the ``OPENAI_UNSUPPORTED`` fields sent at their neutral value; refuse the others by name."""
        if not isinstance(data, dict):
            return data
        asked = sorted(k for k in OPENAI_UNSUPPORTED if k in data and data[k] not in (None, False, 0, "", [], {}))
        if asked:
            raise ValueError("; ".join(f"{k}={data[k]!r}"[:120] + f": this server has no {OPENAI_UNSUPPORTED[k]} "
                                       f"(LLaDA2.0-Uni); leave {k} unset" for k in asked))
        return {k: v for k, v in data.items() if k not in OPENAI_UNSUPPORTED}

    def top_level(self) -> dict:
        """The OpenAI fields that carry task options."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
                "max_tokens": self.max_completion_tokens or self.max_tokens}


class ImagesRequest(BaseModel):
    """``POST /v1/images/generations``. Beyond OpenAI's fields, SGLang-Omni's image parameters
    travel at the top level (``decode_mode``, ``dllm_steps``, ``num_inference_steps`` for the
    decoder's steps, ``guidance_scale`` for ``cfg_scale``, ``width`` + ``height``, ...); anything
    else is refused by name."""

    model_config = ConfigDict(extra="allow")
    prompt: str = Field(min_length=1, max_length=32000)
    model: Optional[str] = None
    n: int = Field(default=1, ge=1, le=4)
    size: Optional[str] = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png"] = "png"
    image_generation: Optional[ImageGenerationOptions] = None


class WorkflowRunRequest(_Strict):
    """``POST /v1/workflows/{name}/runs``: image inputs are data URLs or allowed local paths. Each
    run gets a new thread id (the reply's ``id``); one cannot be chosen."""

    inputs: dict[str, Any] = {}
    seed: Optional[int] = Field(default=None, **_SEED)
    response_format: Literal["b64_json", "url"] = "b64_json"


# ------------------------------------------------------------------ the five tools (MCP, LangChain)
# Each tool takes its inputs plus a few of its task's options, derived from the declarations in
# model_core.options (name, type, help, range); every option defaults to "not given", so the loaded
# checkpoint's own defaults apply (its size, steps and lengths). Step counts are capped at the
# service's default limit (Limits.max_steps), as the HTTP server caps them.
TOOL_OPTIONS = {"generate_image": ("image", ("steps", "cfg_scale", "decoder_steps", "seed")),
                "edit_image": ("edit", ("steps", "cfg_text_scale", "cfg_image_scale", "decoder_steps", "seed")),
                "understand_image": ("understand", ("steps", "seed"))}
_STEP_CAP = {"le": Limits().max_steps}


def _tool_args(name: str, tool: str, base: type) -> type:
    task, names = TOOL_OPTIONS[tool]
    specs = {s.name: s for s in option_specs(TASK_OPTIONS[task])}
    picked = tuple(dataclasses.replace(specs[n], **(_STEP_CAP if n.endswith("steps") else {})) for n in names)
    return options_model(name, picked, base=base, doc=base.__doc__ or "", nullable=False)


class _GenerateImageInputs(_Strict):
    """Draw an image from a text prompt."""

    prompt: str = Field(min_length=1, description="what to draw")
    size: Optional[str] = Field(default=None, description="WIDTHxHEIGHT in pixels, multiples of 32 (default: the model's size)")
    thinking: bool = Field(default=False, description="reason in text first, then draw")


class _EditImageInputs(_Strict):
    """Edit an image following an instruction."""

    image: str = Field(description="source image: a data URL or a local path under an allowed root")
    instruction: str = Field(min_length=1)


class _UnderstandInputs(_Strict):
    """Answer a question about an image."""

    image: str = Field(description="a data URL or a local path under an allowed root")
    question: str = Field(default="Describe this image.")
    max_tokens: Optional[int] = Field(default=None, ge=1, le=Limits().max_tokens,
                                      description="most tokens of the answer (default: the model's)")


GenerateImageArgs = _tool_args("GenerateImageArgs", "generate_image", _GenerateImageInputs)
EditImageArgs = _tool_args("EditImageArgs", "edit_image", _EditImageInputs)
UnderstandArgs = _tool_args("UnderstandArgs", "understand_image", _UnderstandInputs)


class ReasonArgs(_Strict):
    task: str = Field(min_length=1, description="the question or drawing task")
    images: list[str] = Field(default=[], max_length=8, description="data URLs or allowed local paths")
    max_rounds: int = Field(default=3, ge=1, le=8)
    mode: Literal["sketch", "refine", "interleaved"] = Field(
        default="sketch", description="sketch: visual_reasoning; refine: draw_inspect_refine; interleaved: interleaved_story")
    seed: Optional[int] = Field(default=None, **_SEED)


class WorkflowArgs(_Strict):
    name: str = Field(description="a bundled or registered workflow name")
    inputs: dict[str, Any] = Field(default={}, description="workflow inputs; images as data URLs or allowed paths")
    seed: Optional[int] = Field(default=None, **_SEED)
