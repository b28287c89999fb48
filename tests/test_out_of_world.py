"""Requests outside a checkpoint's closed world (``lladauni.json`` "world": "shapes") get an answer that
says what the model can draw or see, not a silent wrong drawing: ``OutOfWorldError`` from the pipeline
(before any model work), a 4xx JSON error over HTTP, a tool error over MCP, the run's error in an agent
graph; questions naming a colour or kind the world lacks are answered "no" without the model.

The checkpoints are the tiny random one (``tiny_ckpt``): a copy that declares the shapes world, and the
original, which declares none and draws the same prompts (the check belongs to the declared world)."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
import torch
from mcp import Client

from lladauni.agent import Agent, LocalBackend
from lladauni.agent.context import TINY_OPTIONS
from lladauni.model_core import LLaDAUni, OutOfWorldError, world
from lladauni.model_core import tasks as model_tasks
from lladauni.model_core.generation.prompts import ImageCodes
from lladauni.model_core.generation.results import ImageResult, TextResult
from lladauni.model_core.pipeline import DEFAULTS_FILE, read_defaults
from lladauni.model_core.training.phrasing import scope_problem, world_summary
from lladauni.tools.mcp_server import build_mcp_server
from lladauni.tools.runtime import Limits
from lladauni.tools.service import ToolService

from .tools_fixtures import png_bytes, running

KEY = "test-key"
OUT_OF_WORLD = ("a cat", "a black hexagon", "ten red circles", "two red circles")
IN_WORLD = "a red circle at the top left"
FAST = {"steps": 2, "decode": False, "seed": 1}


@pytest.fixture(scope="module")
def world_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny random checkpoint, declaring the shapes world."""
    dst = tmp_path_factory.mktemp("world") / "ckpt"
    shutil.copytree(tiny_ckpt, dst)
    (dst / DEFAULTS_FILE).write_text(json.dumps({"world": "shapes"}), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def world_pipe(world_ckpt):
    return LLaDAUni.from_pretrained(world_ckpt, device="cpu", components=("backbone", "image_tokenizer", "decoder"))


@pytest.fixture(scope="module")
def open_pipe(tiny_ckpt):
    return LLaDAUni.from_pretrained(tiny_ckpt, device="cpu")


@pytest.fixture
def no_model(monkeypatch):
    """Every task pipeline replaced by one that fails the test: a refusal must come before model work."""
    for name in ("generate_image", "edit_image", "understand", "generate_interleaved"):
        def called(*args, _name=name, **kw):
            raise AssertionError(f"the model ran ({_name}) on an out-of-world request")
        monkeypatch.setattr(model_tasks, name, called)


def _codes(h=8, w=8):
    return ImageCodes(torch.randint(0, 16384, (h * w,), generator=torch.Generator().manual_seed(0)), h, w)


# ------------------------------------------------------------------------------------ the checkpoint key
def test_the_world_comes_from_the_checkpoint_and_is_read_only(world_pipe, open_pipe):
    assert world_pipe.world == "shapes" and open_pipe.world is None
    with pytest.raises(AttributeError):
        world_pipe.world = None


def test_the_rules_are_those_of_the_world_named():
    """``model_core.world`` judges by the world it is given: an open-world model (None) refuses nothing; the shapes
    world refuses by the grammar's scope check (a drawing must name a shape, an edit need not)."""
    assert world.scope_problem(None, "a black hexagon") is None
    assert world.question_answer(None, "Is there a black hexagon?") is None
    assert world.scope_problem("shapes", "a black hexagon") == scope_problem("a black hexagon")
    assert world.scope_problem("shapes", "make it blue") is not None
    assert world.scope_problem("shapes", "make it blue", "edit") is None
    assert world.scope_problem("shapes", None) is None and world.WORLDS == ("shapes",)
    assert world.question_answer("shapes", "Is there a red circle?") is None


def test_an_unknown_world_is_a_checkpoint_error_naming_file_key_and_known_worlds(tiny_ckpt_copy):
    (tiny_ckpt_copy / DEFAULTS_FILE).write_text('{"world": "animals"}', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_defaults(tiny_ckpt_copy)
    message = str(err.value)
    assert str(tiny_ckpt_copy / DEFAULTS_FILE) in message and "world='animals'" in message and "['shapes']" in message
    with pytest.raises(ValueError, match=r"world=.*known worlds: \['shapes'\]"):
        LLaDAUni.from_pretrained(tiny_ckpt_copy, device="cpu")


# --------------------------------------------------------------------------------------- drawing
@pytest.mark.parametrize("prompt", OUT_OF_WORLD)
@pytest.mark.parametrize("mode", ["normal", "thinking"])
def test_out_of_world_prompts_are_refused_with_what_the_model_can_draw(world_pipe, no_model, prompt, mode):
    with pytest.raises(OutOfWorldError) as err:
        world_pipe.generate_image(prompt, mode=mode, **FAST)
    assert str(err.value) == scope_problem(prompt) and str(err.value).endswith(world_summary())
    assert isinstance(err.value, ValueError)


def test_the_reason_names_what_is_outside(world_pipe, no_model):
    for prompt, part in (("a black hexagon", "'black, hexagon'"), ("ten red circles", "10 shapes do not fit"),
                         ("two red circles", "each shape has its own colour"), ("a cat", "names no shape")):
        with pytest.raises(OutOfWorldError, match=part):
            world_pipe.generate_image(prompt, **FAST)


def test_an_edit_to_a_colour_outside_the_world_is_refused(world_pipe, no_model):
    with pytest.raises(OutOfWorldError, match="'black' is outside what this model can draw"):
        world_pipe.edit_image(_codes(), "make the circle black", **FAST)


def test_an_interleaved_prompt_outside_the_world_is_refused(world_pipe, no_model):
    with pytest.raises(OutOfWorldError, match="names no shape"):
        world_pipe.generate_interleaved("tell a story about a cat", decode=False)


def test_in_world_requests_reach_the_model_and_out_of_world_ones_do_not(world_pipe, monkeypatch):
    reached = []
    monkeypatch.setattr(model_tasks, "generate_image", lambda pipe, prompt, *a: reached.append(prompt) or "drawn")
    monkeypatch.setattr(model_tasks, "edit_image", lambda pipe, image, text, *a: reached.append(text) or "edited")
    assert world_pipe.generate_image(IN_WORLD, **FAST) == "drawn"
    assert world_pipe.edit_image(_codes(), "Make the red circle green.", **FAST) == "edited"
    for prompt in OUT_OF_WORLD:
        with pytest.raises(OutOfWorldError):
            world_pipe.generate_image(prompt, **FAST)
    with pytest.raises(OutOfWorldError):
        world_pipe.edit_image(_codes(), "make the circle black", **FAST)
    assert reached == [IN_WORLD, "Make the red circle green."]


def test_a_checkpoint_without_a_world_draws_the_same_prompts(open_pipe):
    for prompt in ("a cat", "a black hexagon"):
        r = open_pipe.generate_image(prompt, image_h=256, image_w=256, **FAST)
        assert isinstance(r, ImageResult) and r.codes.numel() == r.h * r.w and r.stats.forwards > 0
    r = open_pipe.edit_image(_codes(), "make the circle black", **FAST)
    assert isinstance(r, ImageResult) and r.stats.forwards > 0
    r = open_pipe.understand(_codes(), "Is there a black hexagon?", steps=2, gen_length=8)
    assert r.stats.forwards > 0 and not r.text.startswith("no: 'black")


# ---------------------------------------------------------------------------------- understanding
def test_a_yes_no_question_about_a_thing_outside_the_world_is_answered_no(world_pipe, no_model):
    r = world_pipe.understand(_codes(), "Is there a black hexagon?")
    assert isinstance(r, TextResult) and r.text.startswith("no: ") and "'black, hexagon'" in r.text
    assert r.text.endswith(world_summary()) and r.stats.forwards == 0 and r.token_ids == [] and r.prompt_ids == []
    assert world_pipe.understand(_codes(), "do you see two pink stars").text.startswith("no: 'pink, star'")


def test_another_question_about_a_thing_outside_the_world_gets_what_the_model_sees(world_pipe, no_model):
    r = world_pipe.understand(_codes(), "How many hexagons are there?")
    assert not r.text.startswith("no") and r.text == f"'hexagon' is outside what this model can see. {world_summary()}"


def test_an_in_world_question_goes_to_the_model(world_pipe, monkeypatch):
    asked = []
    monkeypatch.setattr(model_tasks, "understand", lambda pipe, image, q, *a: asked.append(q) or "answered")
    assert world_pipe.understand(_codes(), "Is there a red circle?") == "answered"
    assert world_pipe.understand(_codes(), "Is there a black circle?").text.startswith("no: 'black'")
    assert asked == ["Is there a red circle?"]


# -------------------------------------------------------------------------------------- surfaces
@pytest.fixture(scope="module")
def world_service(world_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("served-world")
    return ToolService(LocalBackend(model=world_pipe), limits=Limits(allowed_roots=(out,)), defaults=TINY_OPTIONS,
                       out_dir=out, model_name="lladauni-tiny-shapes")


@pytest.fixture(scope="module")
def served(world_service):
    with running(world_service, api_key=KEY) as url:
        yield url


def _post(url, path, **kw):
    return httpx.post(f"{url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=120, **kw)


@pytest.mark.parametrize("prompt", OUT_OF_WORLD)
def test_http_answers_an_out_of_world_image_request_with_a_4xx_and_the_reason(served, prompt):
    r = _post(served, "/v1/images/generations", json={"prompt": prompt})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": scope_problem(prompt), "type": "invalid_request_error", "param": None,
                                 "code": "out_of_world"}


def test_http_answers_an_out_of_world_edit_and_chat_image_request_with_a_4xx(served):
    r = _post(served, "/v1/images/edits", files={"image": ("src.png", png_bytes(64), "image/png")},
              data={"prompt": "make the circle black"})
    assert r.status_code == 400 and r.json()["error"]["message"] == scope_problem("make the circle black")
    r = _post(served, "/v1/chat/completions", json={"model": "lladauni-tiny-shapes", "modalities": ["image"],
                                                    "messages": [{"role": "user", "content": "a black hexagon"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "out_of_world", r.text


def test_mcp_returns_a_tool_error_with_the_reason(world_service):
    async def call():
        async with Client(build_mcp_server(world_service)) as c:
            return await c.call_tool("generate_image", {"prompt": "a black hexagon"})

    r = asyncio.run(call())
    assert r.is_error and scope_problem("a black hexagon") in r.content[0].text


def test_an_agent_run_fails_with_the_reason(world_pipe, tmp_path):
    agent = Agent(LocalBackend(model=world_pipe), runs_dir=tmp_path / "runs", text_options=TINY_OPTIONS["text"],
                  image_options=TINY_OPTIONS["image"], edit_options=TINY_OPTIONS["edit"],
                  interleaved_options=TINY_OPTIONS["interleaved"])
    r = agent.run("a black hexagon", graph="plan_then_draw")
    assert r.status == "failed" and scope_problem("a black hexagon") in (r.error or ""), (r.status, r.error)
