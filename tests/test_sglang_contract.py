"""Contract tests with SGLang-Omni's LLaDA2.0-Uni server (sgl-project/sglang-omni@8eea11fc), both ways.

- Our client against SGLang-Omni: a stand-in server that validates requests with SGLang-Omni's
  own parameter models, transcribed here from its source (protocol.py ``ImageGenerationParams``:
  unknown keys silently ignored, so the stand-in records them and the tests require none;
  proto/segments.py ``InterleavedGenerationParams``: strict, unknown keys 422), and replies in
  its shapes (``message.image`` {data, format}, interleaved ``segments``, FastAPI errors).
- SGLang-Omni's clients against our server: its cookbook's request bodies, verbatim, and its
  documented way of reading the reply.
"""

from __future__ import annotations

import base64
import json
from typing import Literal, Optional

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lladauni.agent import HTTPBackend, ScriptedBackend
from lladauni.agent.wire import WireError
from lladauni.tools.runtime import Limits
from lladauni.tools.service import ToolService

from .tools_fixtures import b64_image, data_url, png_bytes, running


# ------------------------------------------------------------------ SGLang-Omni's request models
class SGLangImageGenerationParams(BaseModel):  # protocol.py: no extra="forbid" (unknown keys are ignored)
    model_config = ConfigDict(allow_inf_nan=False)
    mode: Literal["normal", "thinking"] = "normal"
    decode_mode: Literal["normal", "decoder-turbo"] = "normal"
    decoder_steps: Optional[int] = Field(default=None, ge=1)
    seed: Optional[int] = None
    cfg_scale: float = Field(default=1.0, ge=1.0)
    cfg_text_scale: Optional[float] = Field(default=None, ge=0.0)
    cfg_image_scale: float = Field(default=0.0, ge=0.0)
    cfg_rescale: float = Field(default=0.7, ge=0.0, le=1.0)
    image_h: Optional[int] = Field(default=None, ge=32, multiple_of=32)
    image_w: Optional[int] = Field(default=None, ge=32, multiple_of=32)
    dllm_steps: Optional[int] = Field(default=None, ge=1)


class SGLangInterleavedParams(BaseModel):  # proto/segments.py: strict, unknown keys refused
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    mode: Literal["interleaved"]
    max_frames: int = Field(default=10, ge=1)
    text_max_new_tokens: int = Field(default=8192, ge=1)
    image_max_new_tokens: int = Field(default=1500, ge=1)
    dllm_steps: int = Field(default=32, ge=1)
    cfg_scale: float = Field(default=0.0, ge=0)
    cfg_text_scale: float = Field(default=7.5, ge=0)
    cfg_image_scale: float = Field(default=1.5, ge=0)
    cfg_rescale: float = Field(default=0.7, ge=0, le=1)
    decoder_steps: Optional[int] = Field(default=None, ge=1)
    seed: Optional[int] = Field(default=None, ge=0)
    max_image_tokens: int = Field(default=4096, ge=1)
    format: Literal["png"] = "png"
    decode_mode: Literal["normal", "decoder-turbo"] = "normal"


TOP_LEVEL = {"model", "messages", "modalities", "stream", "temperature", "top_p", "top_k", "max_tokens", "seed",
             "images", "image_generation", "max_completion_tokens"}


def _png_b64(color=(10, 200, 10)) -> str:
    return base64.b64encode(png_bytes(16, color)).decode()


class SGLangStandIn:
    """Validates like SGLang-Omni and answers in its shapes; ``ignored`` collects what it would drop."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.ignored: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.bodies.append(body)
        self.ignored += sorted(set(body) - TOP_LEVEL)
        ig = body.get("image_generation")
        modalities = body.get("modalities") or ["text"]
        try:
            if isinstance(ig, dict) and ig.get("mode") == "interleaved":
                SGLangInterleavedParams.model_validate(ig)
                if sorted(modalities) != ["image", "text"] or body.get("images"):
                    return httpx.Response(400, json={"detail": "interleaved takes text in, text and images out"})
                return self._interleaved()
            if ig is not None:
                params = SGLangImageGenerationParams.model_validate(ig)
                self.ignored += sorted(set(ig) - set(SGLangImageGenerationParams.model_fields))
        except ValidationError as exc:
            return httpx.Response(422, json={"detail": [{"loc": ["body", "image_generation", *e["loc"]], "msg": e["msg"],
                                                         "type": e["type"]} for e in exc.errors()]})
        msg: dict = {"role": "assistant"}
        if "image" in modalities:
            msg["image"] = {"data": _png_b64(), "format": "png"}
            if "text" in modalities and ig is not None and params.mode == "thinking":
                msg["content"] = "I will draw a green square."
        else:
            msg["content"] = "a red square"
        return httpx.Response(200, json={"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                                         "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}], "usage": None})

    @staticmethod
    def _interleaved() -> httpx.Response:
        seg_image = {"kind": "image", "mime_type": "image/png", "url": "data:image/png;base64," + _png_b64((1, 2, 3)),
                     "sha256": "0" * 64, "size_bytes": 10}
        segments = [{"type": "segment", "session_id": "r", "segment_index": 0, "kind": "text", "data": "First scene"},
                    {"type": "segment", "session_id": "r", "segment_index": 1, "kind": "image", "data": seg_image},
                    {"type": "segment", "session_id": "r", "segment_index": 2, "kind": "text", "data": "The end"}]
        msg = {"role": "assistant", "content": "First sceneThe end", "segments": segments}
        return httpx.Response(200, json={"choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]})


@pytest.fixture
def sglang():
    server = SGLangStandIn()
    backend = HTTPBackend("http://127.0.0.1:9", flavor="sglang", decoder="turbo", transport=httpx.MockTransport(server),
                          backoff=0.0)
    yield server, backend
    backend.close()


def test_our_client_speaks_sglang_for_every_task(sglang):
    server, b = sglang
    img = b.generate_image("a green square", image_h=512, image_w=256, steps=8, decoder_steps=8, cfg_scale=4.0, seed=42)
    assert img.image.size == (16, 16)
    assert server.bodies[-1]["image_generation"] == {"image_h": 512, "image_w": 256, "dllm_steps": 8, "decoder_steps": 8,
                                                     "cfg_scale": 4.0, "seed": 42, "decode_mode": "decoder-turbo"}
    t = b.generate_image("a clock", mode="thinking")
    assert t.thinking == "I will draw a green square." and server.bodies[-1]["modalities"] == ["text", "image"]
    e = b.edit_image(b64_image(_png_b64()), "make it red", cfg_text_scale=4.0, cfg_image_scale=1.5, steps=8)
    assert e.image is not None and server.bodies[-1]["image_generation"]["dllm_steps"] == 8
    assert b.understand(b64_image(_png_b64()), "what colour?", gen_length=16).text == "a red square"
    assert server.bodies[-1]["max_tokens"] == 16 and "image_generation" not in server.bodies[-1]
    story = b.generate_interleaved("a story", max_frames=3, image_steps=8, text_gen_length=256, decoder_steps=8, seed=1)
    assert [type(s).__name__ for s in story.segments] == ["str", "ImageResult", "str"]
    ig = server.bodies[-1]["image_generation"]
    assert ig == {"mode": "interleaved", "max_frames": 3, "dllm_steps": 8, "text_max_new_tokens": 256, "decoder_steps": 8,
                  "seed": 1, "decode_mode": "decoder-turbo"}
    assert server.ignored == []  # nothing we send would be dropped there


@pytest.mark.parametrize("call,option", [
    (lambda b: b.generate_image("x", threshold=0.9), "threshold"),
    (lambda b: b.generate_image("x", block_length=16), "block_length"),
    (lambda b: b.generate_image("x", use_sprint=True), "use_sprint"),
    (lambda b: b.generate_image("x", thinking_gen_length=64, mode="thinking"), "thinking_gen_length"),
    (lambda b: b.chat("hi", steps=4), "dllm_steps"),
    (lambda b: b.generate_interleaved("x", steps=4), "steps"),
])
def test_options_sglang_lacks_are_refused_by_name_before_sending(sglang, call, option):
    server, b = sglang
    with pytest.raises(WireError, match=option):
        call(b)
    assert server.bodies == []


def test_sglang_errors_reach_the_caller_readably(sglang):
    server, b = sglang
    from lladauni.agent import BackendError

    with pytest.raises(BackendError, match=r"422.*cfg_scale.*greater than or equal to 1"):
        b._post("x", "image", [{"role": "user", "content": "x"}], ["image"], {}, cfg_scale=0.5)


# ------------------------------------------------------------ SGLang-Omni's clients, our server
class DescribedScripted(ScriptedBackend):
    """A scripted model that says what a loaded LLaDA2.0-Uni would: its name, sizes and decoder."""

    def describe(self) -> dict:
        return {"name": "inclusionAI/LLaDA2.0-Uni", "max_image_side": 2048, "min_image_side": 32,
                "default_image_size": [1024, 1024], "decoder_variant": "turbo"}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    out = tmp_path_factory.mktemp("contract")
    (out / "allowed").mkdir()
    (out / "allowed" / "cars.jpg").write_bytes(png_bytes(64))
    backend = DescribedScripted(size=64, replies={"chat": "two cars"})
    svc = ToolService(backend, limits=Limits(allowed_roots=(out / "allowed",)), out_dir=out)
    with running(svc) as url:
        yield url, out, backend


def _chat(url, body):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


def test_the_cookbook_chat_image_request_and_its_reader(ours):
    url, _, backend = ours
    body = {"model": "inclusionAI/LLaDA2.0-Uni", "messages": [{"role": "user", "content": "A sailboat on a calm lake."}],
            "modalities": ["image"], "stream": False,
            "image_generation": {"mode": "normal", "decode_mode": "decoder-turbo", "decoder_steps": 8, "dllm_steps": 8,
                                 "cfg_scale": 4.0, "seed": 42}}
    r = _chat(url, body)
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    assert b64_image(msg["image"]["data"]).size == (64, 64) and msg["image"]["format"] == "png"  # the cookbook's reader
    assert "content" not in msg  # SGLang-Omni: no text asked for, none sent


def test_understanding_requests_of_the_cookbook(ours):
    url, out, _ = ours
    path = str(out / "allowed" / "cars.jpg")
    for body in (
        {"model": "inclusionAI/LLaDA2.0-Uni", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 256},
        {"model": "inclusionAI/LLaDA2.0-Uni", "messages": [{"role": "user", "content": "Briefly describe the cars in this image."}],
         "images": [path], "modalities": ["text"], "max_tokens": 16},
        {"model": "inclusionAI/LLaDA2.0-Uni", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": path}}, {"type": "text", "text": "Briefly describe the cars in this image."}]}],
         "modalities": ["text"], "max_tokens": 16},
        {"model": "inclusionAI/LLaDA2.0-Uni", "messages": [{"role": "user", "content": [
            {"type": "image", "image": data_url()}, {"type": "image_url", "image_url": data_url()}, {"type": "text", "text": "?"}]}]},
    ):
        r = _chat(url, body)
        assert r.status_code == 200, (body, r.text)
        assert r.json()["choices"][0]["message"]["content"] == "two cars"


def test_top_level_images_and_message_images_together_are_refused(ours):
    url, out, _ = ours
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url()}},
                                                      {"type": "text", "text": "?"}]}], "images": [data_url()]}
    r = _chat(url, body)
    assert r.status_code == 400 and "not both" in r.json()["error"]["message"]


def test_the_interleaved_request_of_sglang_and_its_segments(ours):
    url, _, _ = ours
    body = {"model": "inclusionAI/LLaDA2.0-Uni", "messages": [{"role": "user", "content": "Please generate a sequence of 3 frames."}],
            "modalities": ["text", "image"], "stream": False, "temperature": 0.0, "seed": 42, "max_tokens": 8192,
            "image_generation": {"mode": "interleaved", "max_frames": 3, "text_max_new_tokens": 8192, "dllm_steps": 32,
                                 "decode_mode": "decoder-turbo", "decoder_steps": 8, "cfg_scale": 0.0, "cfg_text_scale": 4.0,
                                 "cfg_image_scale": 1.0, "cfg_rescale": 0.5, "seed": 42}}
    r = _chat(url, body)
    assert r.status_code == 200, r.text
    msg = r.json()["choices"][0]["message"]
    segs = msg["segments"]
    assert [s["kind"] for s in segs] == ["text", "image", "text"] and {s["session_id"] for s in segs} == {r.json()["id"]}
    image = segs[1]["data"]
    raw = base64.b64decode(image["url"].split(",", 1)[1])
    assert image["mime_type"] == "image/png" and image["size_bytes"] == len(raw) and len(image["sha256"]) == 64
    assert msg["content"] == segs[0]["data"] + segs[2]["data"]


def test_the_cookbook_images_endpoint_requests(ours):
    url, _, _ = ours
    body = {"model": "inclusionAI/LLaDA2.0-Uni", "prompt": "A sailboat on a calm lake.", "size": "1024x1024",
            "response_format": "b64_json", "decode_mode": "decoder-turbo", "num_inference_steps": 8, "dllm_steps": 8,
            "guidance_scale": 4.0, "seed": 42}
    r = httpx.post(url + "/v1/images/generations", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert b64_image(r.json()["data"][0]["b64_json"]).size == (64, 64)  # the cookbook's reader
    for bad, words in (({**body, "guidance_scale": 2.0, "cfg_scale": 3.0}, "disagrees"),
                       ({**body, "frobnicate": 1}, "unsupported image parameters: frobnicate"),
                       ({**body, "decode_mode": "normal"}, "loaded the 'turbo' decoder"),
                       ({**body, "guidance_scale": 0.5}, "cfg_scale=0.5: must be >= 1")):
        r = httpx.post(url + "/v1/images/generations", json=bad, timeout=30)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (bad, r.text)
    form = {"prompt": "Change the background to a beach.", "response_format": "b64_json", "decode_mode": "decoder-turbo",
            "num_inference_steps": "8", "cfg_text_scale": "4.0", "cfg_image_scale": "1.5", "seed": "42"}
    r = httpx.post(url + "/v1/images/edits", data=form, files={"image": ("source.png", png_bytes(64), "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    assert b64_image(r.json()["data"][0]["b64_json"]).size == (64, 64)
    r = httpx.post(url + "/v1/images/edits", data={**form, "num_inference_steps": "many"},
                   files={"image": ("source.png", png_bytes(64), "image/png")}, timeout=30)
    assert r.status_code == 400 and "num_inference_steps" in r.json()["error"]["message"]


def test_our_models_endpoint_names_the_loaded_checkpoint(ours):
    url, _, _ = ours
    data = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    assert data[0]["id"] == "inclusionAI/LLaDA2.0-Uni" and data[0]["max_image_side"] == 2048
    assert data[0]["default_image_size"] == [1024, 1024] and data[0]["decoder"] == "turbo"


def test_our_client_reads_our_server_in_both_flavors(ours):
    url, _, _ = ours
    for flavor in ("lladauni", "sglang"):
        b = HTTPBackend(url, flavor=flavor, retries=0)
        try:
            assert b.generate_image("x", seed=3, steps=4).image.size == (64, 64)
            assert [type(s).__name__ for s in b.generate_interleaved("x", max_frames=1).segments][:2] == ["str", "ImageResult"]
            assert b.chat("hello").text == "two cars"
        finally:
            b.close()


def test_limits_name_the_field_the_value_came_in(ours):
    url, _, _ = ours
    r = _chat(url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999})
    assert r.status_code == 400 and r.json()["error"]["message"] == "max_tokens=99999 is over this server's limit of 8192"
    r = _chat(url, {"messages": [{"role": "user", "content": "x"}], "modalities": ["image"],
                    "image_generation": {"dllm_steps": 999}})
    assert r.json()["error"]["message"] == "image_generation.dllm_steps=999 is over this server's limit of 256"
