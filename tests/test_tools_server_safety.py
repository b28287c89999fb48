"""Hostile and heavy traffic against the server (a scripted backend, so timing is ours): every
bad request gets the right 4xx and a clear message, a full queue answers 429 with Retry-After,
a client that leaves cancels its work, deadlines hold, and the server stays healthy."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

import httpx
import openai
import pytest

from lladauni.agent import ScriptedBackend
from lladauni.tools.runtime import Limits
from lladauni.tools.server import make_server
from lladauni.tools.service import ToolService

from .tools_fixtures import b64_image, data_url, png_bytes, running

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _service(tmp_path, backend=None, **limits):
    (tmp_path / "allowed").mkdir(exist_ok=True)
    lim = Limits(allowed_roots=(tmp_path / "allowed",), max_body_bytes=256 * 1024, max_image_pixels=512 * 512,
                 max_image_side=1024, **limits)
    return ToolService(backend or ScriptedBackend(size=64), limits=lim, out_dir=tmp_path / "out", model_name="m")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    svc = _service(tmp)
    outside = tmp / "outside.png"
    outside.write_bytes(png_bytes())
    os.symlink(outside, tmp / "allowed" / "link.png")
    (tmp / "allowed" / "ok.png").write_bytes(png_bytes())
    with running(svc, api_key=KEY) as url:
        yield url, svc, tmp


def _chat(image_url=None, **kw):
    content = [{"type": "text", "text": "what?"}]
    if image_url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {"model": "m", "messages": [{"role": "user", "content": content}], **kw}


def _big_png() -> str:
    return data_url(1024)  # 1024x1024 pixels, a few KB of PNG: over the 512x512-pixel limit


HOSTILE = [
    ("bad json", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    ("no messages", "/v1/chat/completions", {"model": "m", "messages": []}, 400, "messages"),
    ("bad base64", "/v1/chat/completions", _chat("data:image/png;base64,@@@not-base64@@@"), 400, "not valid base64"),
    ("not an image", "/v1/chat/completions", _chat("data:image/png;base64,aGVsbG8gd29ybGQ="), 400, "not a readable image"),
    ("image too many pixels", "/v1/chat/completions", _chat(_big_png()), 413, "pixel limit"),
    ("body too large", "/v1/chat/completions", _chat("data:image/png;base64," + "A" * 300_000), 413, "byte limit"),
    ("remote url", "/v1/chat/completions", _chat("http://169.254.169.254/latest"), 400, "remote URLs are not fetched"),
    ("path outside roots", "/v1/chat/completions", _chat("/etc/passwd"), 403, "not an absolute path under an allowed root"),
    ("traversal", "/v1/chat/completions", _chat("{allowed}/../outside.png"), 403, "allowed root"),
    ("symlink out", "/v1/chat/completions", _chat("{allowed}/link.png"), 403, "allowed root"),
    ("relative path", "/v1/chat/completions", _chat("ok.png"), 403, "absolute path"),
    ("unknown model", "/v1/chat/completions", {**_chat(), "model": "gpt-9"}, 404, "unknown model 'gpt-9'"),
    ("unknown option", "/v1/chat/completions", _chat(image_generation={"dllm_stepz": 2}), 400, "dllm_stepz"),
    ("option for another kind", "/v1/chat/completions", _chat(image_generation={"cfg_scale": 2.0}), 400,
     "cfg_scale do(es) not apply to text"),
    ("size not /32", "/v1/images/generations", {"prompt": "x", "size": "100x100"}, 400, "unsupported size 100x100"),
    ("size too big", "/v1/images/generations", {"prompt": "x", "size": "4096x4096"}, 400, "between 32 and 1024"),
    ("size garbage", "/v1/images/generations", {"prompt": "x", "size": "big"}, 400, "WIDTHxHEIGHT"),
    ("steps over limit", "/v1/images/generations", {"prompt": "x", "image_generation": {"dllm_steps": 999}}, 400,
     "over this server's limit"),
    ("empty prompt", "/v1/images/generations", {"prompt": ""}, 400, "prompt"),
    ("unknown workflow", "/v1/workflows/rm-rf/runs", {"inputs": {}}, 404, "unknown workflow 'rm-rf'"),
    ("bad workflow input", "/v1/workflows/draw-check-refine/runs", {"inputs": {"promt": "x"}}, 400, "unknown input 'promt'"),
    ("edits not multipart", "/v1/images/edits", {"prompt": "x"}, 415, "multipart/form-data"),
]


@pytest.mark.parametrize("name,path,body,status,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_clear_4xx(server, name, path, body, status, message):
    url, svc, tmp = server
    if isinstance(body, dict):
        body = json.dumps(body).replace("{allowed}", str(tmp / "allowed")).encode()
    r = httpx.post(url + path, content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"


def test_auth_and_health_after_abuse(server):
    url, svc, tmp = server
    assert httpx.get(url + "/v1/models").status_code == 401
    r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="unsupported size"):
        openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0).images.generate(prompt="x", size="100x100")
    files = {"image": ("a.png", png_bytes(), "image/png"), "mask": ("m.png", png_bytes(), "image/png")}
    r = httpx.post(url + "/v1/images/edits", headers=AUTH, files=files, data={"prompt": "x"})
    assert r.status_code == 400 and "mask is not supported" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/images/edits", headers=AUTH, files={"image": ("a.png", b"GIF89a-junk", "image/png")},
                   data={"prompt": "x"})
    assert r.status_code == 400 and "not a readable image" in r.json()["error"]["message"]
    assert httpx.get(url + "/health").json()["queue"]["pending"] == 0
    ok = httpx.post(url + "/v1/chat/completions", headers=AUTH, json=_chat(str(tmp / "allowed" / "ok.png")))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ok"


def test_thinking_interleaved_and_workflows_through_the_openai_client(server):
    url, svc, tmp = server
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    # thinking is asked for by mode, as in SGLang-Omni (["text", "image"] alone draws in normal mode)
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "a fox"}], modalities=["text", "image"],
                                  extra_body={"image_generation": {"image_h": 256, "image_w": 256, "mode": "thinking"}})
    msg = r.choices[0].message
    assert msg.content == "ok" and b64_image(msg.images[0]["image_url"]["url"].split(",")[1]).size == (64, 64)
    assert msg.image == {"data": msg.images[0]["image_url"]["url"].split(",")[1], "format": "png"}  # SGLang-Omni's shape
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "a story"}],
                                  modalities=["text", "image"], extra_body={"image_generation": {"mode": "interleaved"}})
    segments = r.choices[0].message.segments  # SGLang-Omni's interleaved reply
    assert [s["kind"] for s in segments] == ["text", "image", "text"] and [s["segment_index"] for s in segments] == [0, 1, 2]
    assert r.choices[0].message.content == segments[0]["data"] + segments[2]["data"]
    run = c.post("/workflows/draw-check-refine/runs", body={"inputs": {"prompt": "a red fox", "max_rounds": 1}},
                 cast_to=httpx.Response).json()
    assert run["status"] in ("done", "capped") and run["images"] and run["images"][0].startswith("data:image/png")
    run = c.post("/workflows/caption-then-edit/runs", cast_to=httpx.Response,
                 body={"inputs": {"image": str(tmp / "allowed" / "ok.png"), "goal": "blue"}, "response_format": "url"}).json()
    assert run["status"] in ("done", "capped") and "/v1/files/" in run["images"][0]
    assert "draw-check-refine" in [w["id"] for w in c.get("/workflows", cast_to=httpx.Response).json()["data"]]


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    svc = _service(tmp_path)
    with pytest.raises(ValueError, match="reachable from other machines"):
        make_server(svc, host="0.0.0.0")
    make_server(svc, host="0.0.0.0", api_key="k")  # allowed (not started)
    make_server(svc, host="::1")


class _Overlap(ScriptedBackend):
    """Records the most model calls that were ever in flight at once."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.active = self.most = 0

    def generate_image(self, prompt, **kw):
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            return super().generate_image(prompt, **kw)
        finally:
            with self._lock:
                self.active -= 1


def test_a_chunked_body_over_the_limit_is_refused(server):
    url, svc, tmp = server
    chunks = (b"x" * 65536 for _ in range(8))  # no Content-Length: the limit must hold while streaming
    r = httpx.post(url + "/v1/chat/completions", content=chunks, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "byte limit" in r.json()["error"]["message"]
    assert httpx.get(url + "/health").status_code == 200


def test_a_full_queue_answers_429_and_loses_nothing(tmp_path):
    backend = _Overlap(size=32, delay={"generate_image": 0.4})
    svc = _service(tmp_path, backend, queue_size=1)
    with running(svc) as url:
        def one(i):
            return httpx.post(url + "/v1/images/generations", json={"prompt": f"p{i}"}, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(one, range(6)))
        codes = sorted(r.status_code for r in replies)
        assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
        for r in replies:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]["message"]
        assert len(backend.calls) == codes.count(200)  # every accepted request ran, once
        assert backend.most == 1  # one model: never two calls at once
        assert httpx.get(url + "/health").json()["queue"]["pending"] == 0


def test_a_client_that_leaves_cancels_its_work(tmp_path):
    backend = ScriptedBackend(size=32, delay={"generate_image": 1.0, "chat": 1.0})
    svc = _service(tmp_path, backend)
    with running(svc) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/images/generations", json={"prompt": "slow"}, timeout=0.3)
        with httpx.stream("POST", url + "/v1/chat/completions", json={**_chat(), "stream": True}, timeout=10) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the role chunk, then hang up mid-work
        deadline = time.monotonic() + 10
        while svc.worker.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = svc.worker.stats()
        assert st["pending"] == 0 and st["cancelled"] == 2 and st["completed"] == 0
        assert backend.calls == []  # neither call ran to completion


def test_every_request_has_a_deadline(tmp_path):
    backend = ScriptedBackend(size=32, delay={"generate_image": 1.0})
    svc = _service(tmp_path, backend, timeout_s=0.3)
    with running(svc) as url:
        r = httpx.post(url + "/v1/images/generations", json={"prompt": "slow"}, timeout=10)
        assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
        time.sleep(1.0)
        assert svc.worker.stats()["pending"] == 0 and backend.calls == []
