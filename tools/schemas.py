"""Typed request schemas shared by the HTTP server, the MCP server and the LangChain tools.

Model options travel in ``image_generation`` as SGLang-Omni names them (``dllm_steps``,
``decoder_steps``, ``cfg_scale``, ``mode``, ``seed``, ``image_h``/``image_w`` ...), so one client
(e.g. ``lladauni_agent.HTTPBackend``) works against both servers.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatRequest", "EditImageArgs", "GenerateImageArgs", "ImageGenerationOptions", "ImagesRequest",
           "ReasonArgs", "UnderstandArgs", "WorkflowArgs", "WorkflowRunRequest", "parse_size"]

Steps = Field(default=None, ge=1, le=1024)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageGenerationOptions(_Strict):
    """The ``image_generation`` extra object (names as SGLang-Omni's LLaDA2 server)."""

    mode: Optional[Literal["normal", "thinking", "interleaved"]] = None
    dllm_steps: Optional[int] = Steps
    image_steps: Optional[int] = Steps
    thinking_steps: Optional[int] = Steps
    decoder_steps: Optional[int] = Steps
    block_length: Optional[int] = Field(default=None, ge=1, le=1024)
    threshold: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    cfg_scale: Optional[float] = Field(default=None, ge=0.0, le=50.0)
    cfg_text_scale: Optional[float] = Field(default=None, ge=0.0, le=50.0)
    cfg_image_scale: Optional[float] = Field(default=None, ge=0.0, le=50.0)
    cfg_rescale: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    thinking_temperature: Optional[float] = Field(default=None, ge=0.0, le=5.0)
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1)
    image_h: Optional[int] = Field(default=None, ge=32)
    image_w: Optional[int] = Field(default=None, ge=32)
    size: Optional[str] = None
    max_frames: Optional[int] = Field(default=None, ge=1, le=16)
    use_sprint: Optional[bool] = None
    cache: Optional[Literal["exact", "none"]] = None
    decoder_variant: Optional[Literal["turbo", "normal"]] = None


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


class ImageURL(BaseModel):
    url: str
    detail: Optional[str] = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[Union[TextPart, ImagePart]], None] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``. ``modalities`` ["text"] answers in text (with images: image
    understanding); ["image"] draws (with an input image: edits); ["text", "image"] thinks then
    draws, or writes interleaved text and images with ``image_generation.mode="interleaved"``."""

    model_config = ConfigDict(extra="ignore")  # OpenAI fields we do not use (user, logprobs ...)
    model: str
    messages: list[Message] = Field(min_length=1)
    modalities: list[Literal["text", "image"]] = ["text"]
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=5.0)
    seed: Optional[int] = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=1)
    image_generation: Optional[ImageGenerationOptions] = None


class ImagesRequest(BaseModel):
    """``POST /v1/images/generations``."""

    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=32000)
    model: Optional[str] = None
    n: int = Field(default=1, ge=1, le=4)
    size: Optional[str] = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png"] = "png"
    image_generation: Optional[ImageGenerationOptions] = None


class WorkflowRunRequest(_Strict):
    """``POST /v1/workflows/{name}/runs``: image inputs are data URLs or allowed local paths."""

    inputs: dict[str, Any] = {}
    thread_id: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    seed: Optional[int] = None
    response_format: Literal["b64_json", "url"] = "b64_json"


# ------------------------------------------------------------------ the five tools (MCP, LangChain)
class GenerateImageArgs(_Strict):
    prompt: str = Field(min_length=1, description="what to draw")
    size: str = Field(default="1024x1024", description="WIDTHxHEIGHT in pixels, multiples of 32")
    steps: int = Field(default=8, ge=1, le=256, description="denoising steps per 32-token block")
    cfg_scale: float = Field(default=4.0, ge=0.0, le=50.0)
    thinking: bool = Field(default=False, description="reason in text first, then draw")
    decoder_steps: Optional[int] = Field(default=None, ge=1, le=256)
    seed: Optional[int] = Field(default=None, ge=0, description="fixed seed for reproducible images")


class EditImageArgs(_Strict):
    image: str = Field(description="source image: a data URL or a local path under an allowed root")
    instruction: str = Field(min_length=1)
    steps: int = Field(default=8, ge=1, le=256)
    cfg_text_scale: float = Field(default=4.0, ge=0.0, le=50.0)
    cfg_image_scale: float = Field(default=0.0, ge=0.0, le=50.0)
    decoder_steps: Optional[int] = Field(default=None, ge=1, le=256)
    seed: Optional[int] = Field(default=None, ge=0)


class UnderstandArgs(_Strict):
    image: str = Field(description="a data URL or a local path under an allowed root")
    question: str = Field(default="Describe this image.")
    max_tokens: int = Field(default=2048, ge=1, le=8192)
    steps: Optional[int] = Field(default=None, ge=1, le=256)
    seed: Optional[int] = Field(default=None, ge=0)


class ReasonArgs(_Strict):
    task: str = Field(min_length=1, description="the question or drawing task")
    images: list[str] = Field(default=[], max_length=8, description="data URLs or allowed local paths")
    max_rounds: int = Field(default=3, ge=1, le=8)
    mode: Literal["sketch", "refine", "interleaved"] = Field(
        default="sketch", description="sketch: visual_reasoning; refine: draw_inspect_refine; interleaved: interleaved_story")
    seed: Optional[int] = Field(default=None, ge=0)


class WorkflowArgs(_Strict):
    name: str = Field(description="a bundled or registered workflow name")
    inputs: dict[str, Any] = Field(default={}, description="workflow inputs; images as data URLs or allowed paths")
    seed: Optional[int] = Field(default=None, ge=0)
