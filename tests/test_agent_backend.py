"""HTTPBackend against an in-process fake OpenAI-compatible server (httpx MockTransport), the
artifact store's boundaries, and the reply parsers."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from lladauni.agent import Agent, BackendError, HTTPBackend, ScriptedBackend
from lladauni.agent.artifacts import ArtifactStore
from lladauni.agent.prompts import parse_action, parse_claims, parse_verdict


def _png(color=(10, 200, 30), size=32) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class FakeServer:
    """SGLang-Omni's reply shapes: text in message.content, an image in message.image.data."""

    def __init__(self, understand="yes", fail=None):
        self.bodies: list[dict] = []
        self.understand = understand
        self.fail = list(fail or [])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail:
            raise self.fail.pop(0)(f"simulated", request=request)
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        self.bodies.append(body)
        msg: dict = {"role": "assistant", "content": ""}
        if "image" in body["modalities"]:
            msg["image"] = {"data": _png()}
            if "text" in body["modalities"]:
                msg["content"] = "thinking about it"
        else:
            content = body["messages"][-1]["content"]
            msg["content"] = self.understand if isinstance(content, list) else "1. a green square"
        return httpx.Response(200, json={"choices": [{"index": 0, "message": msg}]})


def _backend(server, **kw) -> HTTPBackend:
    return HTTPBackend("http://127.0.0.1:9", transport=httpx.MockTransport(server), backoff=0.0, **kw)


def test_generate_image_request_and_reply():
    server = FakeServer()
    b = _backend(server, api_key="tok")
    r = b.generate_image("a green square", image_h=256, image_w=256, steps=4, decoder_steps=2, cfg_scale=2.0,
                         seed=7, progress=lambda *a: None, decode=True)
    assert r.image.size == (32, 32) and r.codes.numel() == 0 and (r.h, r.w) == (0, 0)
    body = server.bodies[0]
    assert body["modalities"] == ["image"] and body["stream"] is False and body["seed"] == 7
    assert body["image_generation"] == {"image_h": 256, "image_w": 256, "dllm_steps": 4, "decoder_steps": 2,
                                        "cfg_scale": 2.0, "seed": 7}
    assert body["messages"] == [{"role": "user", "content": "a green square"}]
    t = b.generate_image("x", mode="thinking")
    assert server.bodies[1]["modalities"] == ["text", "image"] and t.thinking == "thinking about it"


def test_understand_and_edit_send_pixels_as_data_urls():
    server = FakeServer(understand="No, it is red.")
    b = _backend(server)
    img = Image.new("RGB", (16, 16), (255, 0, 0))
    assert b.understand(img, "is it green?", gen_length=64).text == "No, it is red."
    parts = server.bodies[0]["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,") and parts[1]["text"] == "is it green?"
    assert server.bodies[0]["max_tokens"] == 64 and server.bodies[0]["modalities"] == ["text"]
    e = b.edit_image(img, "make it blue", cfg_text_scale=4.0)
    assert e.image is not None and server.bodies[1]["image_generation"]["cfg_text_scale"] == 4.0
    from lladauni.model_core import ImageCodes
    import torch

    with pytest.raises(TypeError, match="sends pixels only"):
        b.understand(ImageCodes(torch.zeros(4, dtype=torch.long), 2, 2), "q")
    with pytest.raises(BackendError, match="cannot encode"):
        b.encode_image(img)


def test_connection_errors_are_retried_and_nothing_else():
    server = FakeServer(fail=[httpx.ConnectError, httpx.ConnectError])
    assert _backend(server, retries=2).chat("hi").text == "1. a green square"
    server = FakeServer(fail=[httpx.ConnectError] * 3)
    with pytest.raises(BackendError, match="cannot reach http://127.0.0.1:9"):
        _backend(server, retries=2).chat("hi")
    assert server.bodies == []
    server = FakeServer(fail=[httpx.ReadTimeout])  # the server may be working: never retried
    with pytest.raises(BackendError, match="timed out"):
        _backend(server, retries=5).chat("hi")
    assert server.bodies == []


def test_http_errors_and_bad_replies_are_readable():
    def err(request):
        return httpx.Response(429, json={"error": {"message": "queue full"}})

    with pytest.raises(BackendError, match="chat: the server answered 429: queue full"):
        _backend(err).chat("hi")

    def junk(request):
        return httpx.Response(200, text="<html>proxy</html>")

    with pytest.raises(BackendError, match="not a chat completion"):
        _backend(junk).chat("hi")

    def no_image(request):
        return httpx.Response(200, json={"choices": [{"message": {"content": "sorry"}}]})

    with pytest.raises(BackendError, match="returned no image"):
        _backend(no_image).generate_image("x")
    with pytest.raises(ValueError, match="base_url='localhost:8000'"):
        HTTPBackend("localhost:8000")


def test_draw_inspect_refine_over_http(tmp_path):
    """The HTTP backend returns pixels only, so 'reuse' falls back to the pixel path, recorded."""
    server = FakeServer(understand="yes")
    agent = Agent(_backend(server), runs_dir=tmp_path, image_options={"image_h": 256, "image_w": 256})
    r = agent.run("a green square", graph="draw_inspect_refine", retokenize="reuse")
    assert r.status == "done" and r.state["claims"] == ["a green square"]
    assert r.state["retokenize"] == "reuse" and {v["retokenize"] for v in r.state["verdicts"]} == {"roundtrip"}
    assert r.state["images"][0]["codes"] is None and r.best_image.is_file()
    assert [b["modalities"] for b in server.bodies] == [["text"], ["image"], ["text"]]


def test_http_failure_mid_graph_stops_cleanly(tmp_path):
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 2:
            return httpx.Response(500, json={"error": "decoder crashed"})
        return FakeServer()(request)

    r = Agent(_backend(handler), runs_dir=tmp_path).run("x", graph="plan_then_draw")
    assert r.status == "failed" and r.error == "draw failed: BackendError: generate_image: the server answered 500: decoder crashed"
    assert len(calls) == 2 and r.report_path.is_file()


def test_artifact_store_is_content_addressed_and_confined(tmp_path):
    import torch

    store = ArtifactStore(tmp_path / "run")
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    a = store.put(image=img, codes=torch.arange(4), h=2, w=2, origin="generate")
    b = store.put(image=img.copy(), codes=torch.arange(4), h=2, w=2, origin="generate")
    assert a == b and len(list((tmp_path / "run" / "images").iterdir())) == 1
    assert store.load_codes(a).codes.tolist() == [0, 1, 2, 3] and store.load_image(a).size == (8, 8)
    with pytest.raises(ValueError, match="leaves the run directory"):
        store.path("../../etc/passwd")
    with pytest.raises(ValueError, match="leaves the run directory"):
        store.load_image({**a, "png": "/etc/passwd"})
    with pytest.raises(ValueError, match="4 codes for a 3x3 grid"):
        store.put(codes=torch.arange(4), h=3, w=3, origin="x")
    with pytest.raises(ValueError, match="nothing to store"):
        store.put(origin="x")


def test_parsers():
    assert parse_claims("Here:\n1. A red cat.\n- a blue sky\n* a red cat\n<|x|>\nok", 5) == ["Here:", "A red cat", "a blue sky"]
    assert parse_claims("<|tiny_unused_3|> <IMAGE4>", 5) == []
    assert parse_claims("a b c d\n" * 1 + "\n".join(f"claim number {i}" for i in range(9)), 3)[-1] == "claim number 1"
    assert parse_verdict("Yes, it is.") is True and parse_verdict(" no.") is False
    assert parse_verdict("<|x|> maybe") is None and parse_verdict("") is None
    assert parse_action("hmm SKETCH: a square\nmore") == ("sketch", "a square")
    assert parse_action("ANSWER: 12 apples") == ("answer", "12 apples")
    assert parse_action("just text") == ("none", "just text")


def test_scripted_backend_is_deterministic():
    a, b = ScriptedBackend(), ScriptedBackend()
    assert a.generate_image("x", seed=1).codes.tolist() == b.generate_image("x", seed=1).codes.tolist()
    assert a.generate_image("x", seed=1).codes.tolist() != a.generate_image("x", seed=2).codes.tolist()
    assert ScriptedBackend(replies={"chat": ["a", "b"]}).chat("q").text == "a"
