"""No checkpoint given means the embedded default model, at its own sizes (SHAPES_OPTIONS): LocalBackend,
AgentContext, and the chat/generate/agent/run/serve CLIs. Nothing here loads a model."""

from __future__ import annotations

import argparse

import pytest

import lladauni.model_core.checkpoint as mc
from lladauni.agent import LocalBackend
from lladauni.agent.context import SHAPES_OPTIONS, AgentContext
from lladauni.tools.cli import build_parser, main
from lladauni.tools.cli_options import options_from_args


@pytest.fixture
def no_default_model(tmp_path, monkeypatch):
    monkeypatch.setattr(mc, "DEFAULT_CHECKPOINT_DIR", tmp_path / "missing")
    return tmp_path / "missing"


@pytest.fixture
def default_model_present(tmp_path, monkeypatch):
    d = tmp_path / "shapes-tiny"
    d.mkdir()
    (d / "config.json").write_text("{}")
    monkeypatch.setattr(mc, "DEFAULT_CHECKPOINT_DIR", d)
    return d


def test_shapes_options_are_sized_for_the_default_model():
    assert SHAPES_OPTIONS["image"]["image_h"] == SHAPES_OPTIONS["image"]["image_w"] == 96
    assert SHAPES_OPTIONS["interleaved"]["image_h"] == 96
    assert all(SHAPES_OPTIONS[k]["decoder_steps"] == 8 for k in ("image", "edit", "interleaved"))
    assert set(SHAPES_OPTIONS) == {"text", "image", "edit", "interleaved"}


def test_local_backend_without_a_checkpoint_is_the_default_model():
    b = LocalBackend(device="cpu")
    assert b.checkpoint is None and b.uses_default_model and not b.loaded
    b.unload()  # nothing loaded yet: a no-op, and allowed (it can load the default model again)
    wrapped = LocalBackend(model=object())
    assert not wrapped.uses_default_model and wrapped.loaded
    with pytest.raises(ValueError, match="did not load"):
        wrapped.unload()


def test_local_backend_reports_a_missing_default_model_when_it_loads(no_default_model):
    with pytest.raises(mc.CheckpointError, match="embedded default model is missing"):
        LocalBackend(device="cpu").load()


def test_agent_context_falls_back_to_the_default_model(monkeypatch, no_default_model, tmp_path):
    monkeypatch.delenv("LLADAUNI_SERVER", raising=False)
    monkeypatch.delenv("LLADAUNI_CHECKPOINT", raising=False)
    with pytest.raises(ValueError, match="no backend.*embedded default model is missing"):
        AgentContext().get_backend()
    d = tmp_path / "present"
    d.mkdir()
    (d / "config.json").write_text("{}")
    monkeypatch.setattr(mc, "DEFAULT_CHECKPOINT_DIR", d)
    b = AgentContext().get_backend()
    assert isinstance(b, LocalBackend) and b.uses_default_model


def _args(argv):
    return build_parser().parse_args(argv)


def test_cli_sizes_follow_the_model():
    """Unset flags are not sent: the model's own defaults (its lladauni.json) apply; set ones win."""
    a = _args(["generate", "a red circle at the top left", "--out", "x.png"])
    assert options_from_args(a, "image") == {}
    a = _args(["generate", "x", "--out", "x.png", "--checkpoint", "ckpt", "--height", "512", "--steps", "3", "--no-decode"])
    assert options_from_args(a, "image") == {"image_h": 512, "steps": 3, "decode": False}
    assert options_from_args(_args(["chat", "hi", "--steps", "3"]), "chat") == {"steps": 3}
    model = LocalBackend(device="cpu").load()  # the embedded default model
    o = model.default_options("image")
    assert (o.steps, o.decoder_steps, o.thinking_gen_length) == (SHAPES_OPTIONS["image"]["steps"], 8, 128)
    assert model.describe()["default_image_size"] == [96, 96] and model.describe()["name"] == "lladauni/shapes-tiny"
    o = model.default_options("chat")
    assert (o.gen_length, o.steps) == (SHAPES_OPTIONS["text"]["gen_length"], SHAPES_OPTIONS["text"]["steps"])
    assert _args(["serve"]).checkpoint is None and _args(["serve"]).preset == "default"


def test_agent_cli_options_follow_the_model():
    from lladauni.agent.cli import _options

    a = _args(["agent", "x"])
    assert _options(a, default_model=True) == SHAPES_OPTIONS
    a = _args(["agent", "x", "--server", "http://h", "--size", "512x256", "--steps", "3"])
    o = _options(a, default_model=False)
    assert o["image"] == {"image_h": 512, "image_w": 256, "steps": 3} and o["text"] == {}  # the rest: the server's own
    assert o["interleaved"] == {"image_h": 512, "image_w": 256, "image_steps": 3}


def test_run_cli_overrides_start_from_shapes_options():
    from lladauni.agent.workflows.cli import _overrides

    a = argparse.Namespace(size=None, steps=None, decoder_steps=None, gen_length=None)
    assert _overrides(a, SHAPES_OPTIONS) == SHAPES_OPTIONS
    a = argparse.Namespace(size="128x128", steps=None, decoder_steps=None, gen_length=16)
    o = _overrides(a, SHAPES_OPTIONS)
    assert o["image"]["image_h"] == 128 and o["text"]["gen_length"] == 16 and o["text"]["steps"] == SHAPES_OPTIONS["text"]["steps"]
    assert SHAPES_OPTIONS["image"]["image_h"] == 96  # not mutated
    assert _overrides(argparse.Namespace(size=None, steps=None, decoder_steps=None, gen_length=None)) == \
        {"text": {}, "image": {}, "edit": {}, "interleaved": {}}


@pytest.mark.parametrize("argv", [
    ["chat", "hi"],
    ["generate", "x", "--out", "{tmp}/x.png"],
    ["run", "draw-check-refine", "--out", "{tmp}/run", "--set", "prompt=a red circle at the top"],
    ["agent", "a red circle at the top", "--runs-dir", "{tmp}/runs"],
    ["serve"],
    ["mcp"],
])
def test_clis_without_a_checkpoint_say_the_default_model_is_missing(argv, no_default_model, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "embedded default model is missing" in err and str(no_default_model) in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
