"""Every public default works on the embedded default model, through every boundary: no options
anywhere, so each surface must take the checkpoint's own defaults (its lladauni.json: 96x96
images, its steps and lengths) rather than full-size constants of its own."""

from __future__ import annotations

import json

import httpx
import pytest

from lladauni.agent import Agent, HTTPBackend, LocalBackend
from lladauni.tools.runtime import Limits
from lladauni.tools.schemas import EditImageArgs, GenerateImageArgs, UnderstandArgs
from lladauni.tools.service import ToolService

from .tools_fixtures import data_url, running

PROMPT = "a red circle at the top left"


@pytest.fixture(scope="module")
def embedded():
    b = LocalBackend(device="cpu")  # the embedded default model
    b.load()
    return b


def test_the_model_itself(embedded):
    m = embedded.load()
    img = m.generate_image(PROMPT)
    assert img.image.size == (96, 96) and (img.h, img.w) == (3, 3)
    assert isinstance(m.understand(img.image, "what is at the top left?").text, str)
    assert m.edit_image(img.image, "make the circle blue").image.size == (96, 96)
    assert isinstance(m.chat("what shapes do you know?").text, str)
    story = m.generate_interleaved(PROMPT)
    assert all(s.image.size == (96, 96) for s in story.images)


def test_the_tools_mcp_and_langchain_call(embedded, tmp_path):
    svc = ToolService(embedded, out_dir=tmp_path)
    assert svc.model_name == "lladauni/shapes-tiny" and svc.max_image_side == 96
    r = svc.worker.run_sync(svc.generate_image_job(GenerateImageArgs(prompt=PROMPT)))
    assert r["images"][0].size == (96, 96) and r["size"] == "96x96"
    r = svc.worker.run_sync(svc.edit_image_job(EditImageArgs(image=data_url(96), instruction="make it blue")))
    assert r["images"][0].size == (96, 96)
    r = svc.worker.run_sync(svc.understand_job(UnderstandArgs(image=data_url(96))))
    assert isinstance(r["text"], str)


def test_the_http_server_and_client(embedded, tmp_path):
    svc = ToolService(embedded, limits=Limits(), out_dir=tmp_path)
    with running(svc) as url:
        models = httpx.get(url + "/v1/models", timeout=30).json()["data"]
        assert models[0]["id"] == "lladauni/shapes-tiny" and models[0]["default_image_size"] == [96, 96]
        b = HTTPBackend(url, retries=0)  # no model name: the server's own
        try:
            assert b.generate_image(PROMPT).image.size == (96, 96)
            assert b.generate_image(PROMPT, mode="thinking").image.size == (96, 96)
            assert isinstance(b.chat("hello").text, str)
            assert b.edit_image(b.generate_image(PROMPT).image, "make it blue").image.size == (96, 96)
            story = b.generate_interleaved(PROMPT)
            local = embedded.generate_interleaved(PROMPT)  # greedy: the same story in-process
            assert [s if isinstance(s, str) else s.image.size for s in story.segments] == \
                [s if isinstance(s, str) else s.image.size for s in local.segments]
        finally:
            b.close()
        r = httpx.post(url + "/v1/images/generations", json={"prompt": PROMPT}, timeout=120)
        assert r.status_code == 200, r.text
        r = httpx.post(url + "/v1/images/generations", json={"prompt": PROMPT, "size": "1024x1024"}, timeout=120)
        assert r.status_code == 400 and "96" in r.json()["error"]["message"]  # the model's limit, said up front


def test_the_agent_graphs(embedded, tmp_path):
    run = Agent(embedded, runs_dir=tmp_path / "runs").run(PROMPT, graph="plan_then_draw")
    assert run.status == "done" and run.best_image is not None


def test_the_cli_without_flags(tmp_path, capsys):
    from lladauni.tools.cli import main

    out = tmp_path / "x.png"
    assert main(["generate", PROMPT, "--out", str(out), "--device", "cpu", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["h"], meta["w"]) == (3, 3) and meta["model"] == "lladauni/shapes-tiny" and out.is_file()
