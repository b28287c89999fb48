"""``tools.as_langchain_tools``: each StructuredTool invoked directly (no agent), as a LangChain
tool call (ToolMessage with the images as artifact), sync and async, on the tiny checkpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool

from lladauni.tools.langchain_tools import as_langchain_tools
from lladauni.agent import ScriptedBackend
from lladauni.agent.context import TINY_OPTIONS
from lladauni.tools.runtime import Limits
from lladauni.tools.service import ToolService

from .agent_fixtures import tiny_backend  # noqa: F401 - fixture
from .tools_fixtures import data_url


def _by_name(ts: list) -> dict[str, StructuredTool]:
    return {t.name: t for t in ts}


def test_every_tool_on_the_tiny_model(tiny_backend, tmp_path):  # noqa: F811
    ts = _by_name(as_langchain_tools(tiny_backend, defaults=TINY_OPTIONS, out_dir=tmp_path))
    assert sorted(ts) == ["edit_image", "generate_image", "reason_visually", "run_workflow", "understand_image"]
    assert ts["generate_image"].args_schema.model_json_schema()["required"] == ["prompt"]

    call = {"name": "generate_image", "args": {"prompt": "a fox", "size": "256x256", "steps": 2, "decoder_steps": 2,
                                               "seed": 1}, "id": "c1", "type": "tool_call"}
    msg = ts["generate_image"].invoke(call)
    assert isinstance(msg, ToolMessage) and msg.tool_call_id == "c1" and "images: " in msg.content
    assert msg.artifact["images"][0].size == (256, 256) and Path(msg.artifact["paths"][0]).is_file()

    text = ts["understand_image"].invoke({"image": data_url(), "question": "colour?", "max_tokens": 32, "steps": 2})
    assert isinstance(text, str) and text
    story = ts["reason_visually"].invoke({"task": "draw a fox", "mode": "refine", "max_rounds": 1})
    assert "images: " in story
    run = ts["run_workflow"].invoke({"name": "draw-check-refine", "inputs": {"prompt": "fox", "max_rounds": 1}})
    assert "images: " in run


def test_edit_async_and_errors_the_model_can_read(tmp_path):
    svc = ToolService(ScriptedBackend(size=64), out_dir=tmp_path, limits=Limits(allowed_roots=(tmp_path,)))
    ts = _by_name(as_langchain_tools(svc))
    msg = asyncio.run(ts["edit_image"].ainvoke({"name": "edit_image", "args": {"image": data_url(), "instruction": "blue"},
                                                "id": "e1", "type": "tool_call"}))
    assert msg.artifact["images"][0].size == (64, 64)
    out = ts["understand_image"].invoke({"image": "/etc/passwd"})  # handle_tool_error: the message, not a crash
    assert "bad input" in out and "allowed root" in out
    out = ts["generate_image"].invoke({"prompt": "x", "size": "33x33"})
    assert "unsupported size" in out
