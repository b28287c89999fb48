"""The OpenAI-compatible server on the tiny checkpoint, driven by the official ``openai`` client
and by the agent layer's ``HTTPBackend`` (agent -> HTTP -> server -> model), on loopback."""

from __future__ import annotations

import httpx
import openai
import pytest

from lladauni.agent import Agent, HTTPBackend
from lladauni.agent.context import TINY_OPTIONS
from lladauni.tools.runtime import Limits
from lladauni.tools.service import ToolService

from .agent_fixtures import tiny_backend  # noqa: F401 - fixture
from .tools_fixtures import b64_image, data_url, png_bytes, running

KEY = "test-key"
IG = {"dllm_steps": 2, "decoder_steps": 2, "image_h": 256, "image_w": 256, "seed": 3}


@pytest.fixture(scope="module")
def served(tiny_backend, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("served")
    svc = ToolService(tiny_backend, limits=Limits(allowed_roots=(out / "allowed",)), defaults=TINY_OPTIONS,
                      out_dir=out, model_name="lladauni-tiny")
    (out / "allowed").mkdir()
    with running(svc, api_key=KEY) as url:
        yield url, svc, out


@pytest.fixture
def client(served):
    url, _, _ = served
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    yield c
    c.close()


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list()] == ["lladauni-tiny", "lladauni-tiny-reasoner"]
    h = httpx.get(f"{served[0]}/health").json()
    assert h["status"] == "ok" and h["queue"]["pending"] == 0


def test_chat_text_and_stream_agree(client):
    kw = dict(model="lladauni-tiny", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
              max_tokens=32, extra_body={"image_generation": {"dllm_steps": 2}})
    r = client.chat.completions.create(**kw)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "stop" and text
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text  # deterministic
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_chat_understands_a_data_url_and_an_allowed_path(client, served):
    _, _, out = served
    path = out / "allowed" / "red.png"
    path.write_bytes(png_bytes(64))
    answers = []
    for url in (data_url(64), str(path)):
        r = client.chat.completions.create(
            model="lladauni-tiny", max_tokens=32, extra_body={"image_generation": {"dllm_steps": 2}},
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": "what colour?"}]}])
        answers.append(r.choices[0].message.content)
    assert answers[0] and answers[0] == answers[1]  # same pixels, same answer


def test_images_generate_b64_and_url(client, served):
    r = client.images.generate(prompt="a red fox", size="256x256", extra_body={"image_generation": IG})
    im = b64_image(r.data[0].b64_json)
    assert im.size == (256, 256)
    r2 = client.images.generate(prompt="a red fox", size="256x256", response_format="url",
                                extra_body={"image_generation": IG})
    assert r2.data[0].url.startswith(served[0] + "/v1/files/")
    assert httpx.get(r2.data[0].url).status_code == 401  # files need the token too
    got = httpx.get(r2.data[0].url, headers={"Authorization": f"Bearer {KEY}"})
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert b64_image(__import__("base64").b64encode(got.content).decode()).tobytes() == im.tobytes()  # same seed


def test_images_edit_multipart(client):
    r = client.images.edit(image=("src.png", png_bytes(64), "image/png"), prompt="make it blue",
                           extra_body={"image_generation": {"dllm_steps": 2, "decoder_steps": 2, "seed": 1}})
    assert b64_image(r.data[0].b64_json).size[0] >= 256


def test_http_backend_through_the_server_to_the_model(served, tiny_backend, tmp_path):  # noqa: F811
    url, svc, _ = served
    b = HTTPBackend(url, model="lladauni-tiny", api_key=KEY, retries=0)
    try:
        img = b.generate_image("a cat", seed=5, **TINY_OPTIONS["image"])
        local = tiny_backend.generate_image("a cat", seed=5, **TINY_OPTIONS["image"])
        assert img.image.tobytes() == local.image.tobytes()  # the server adds nothing and loses nothing
        text = b.understand(img.image, "what is it?", **TINY_OPTIONS["text"]).text
        assert text == tiny_backend.chat("what is it?", images=[img.image], **TINY_OPTIONS["text"]).text
        assert b.chat("hello", **TINY_OPTIONS["text"]).text
        story = b.generate_interleaved("a story", **TINY_OPTIONS["interleaved"])
        assert story.segments
        agent = Agent(b, runs_dir=tmp_path / "runs", text_options=TINY_OPTIONS["text"],
                      image_options=TINY_OPTIONS["image"])
        res = agent.run("a lighthouse at dusk", graph="plan_then_draw")
        assert res.status == "done" and res.best_image is not None and res.best_image.is_file()
    finally:
        b.close()
    assert svc.worker.stats()["pending"] == 0


def test_the_reasoner_alias_runs_the_agent_graph(client):
    r = client.chat.completions.create(model="lladauni-tiny-reasoner", messages=[{"role": "user", "content": "draw a fox"}],
                                       modalities=["image"])
    msg = r.choices[0].message
    assert msg.trace["status"] in ("done", "capped") and msg.images  # refine graph: the best image comes back


def test_lladauni_serve_subprocess(tiny_ckpt, tmp_path):
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "lladauni.tools.cli", "serve", "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--preset", "tiny",
           "--port", str(port), "--out-dir", str(tmp_path), "--model-name", "t"]
    bad = subprocess.run(cmd[:-4] + ["--host", "0.0.0.0"], cwd=root, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--api-key" in bad.stderr
    p = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, p.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "lladauni serve did not come up"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = c.images.generate(model="t", prompt="a fox")  # --preset tiny: 256² in 2 steps
        assert b64_image(r.data[0].b64_json).size == (256, 256)
    finally:
        p.terminate()
        p.wait(20)
