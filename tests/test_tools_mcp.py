"""The MCP server through the official ``mcp`` SDK client: over stdio (``lladauni mcp`` as a
subprocess on the tiny checkpoint) and over streamable HTTP on loopback (with a bearer token),
listing and calling every tool."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from lladauni.agent import ScriptedBackend
from lladauni.tools.mcp_server import TOOLS, build_mcp_server, mcp_http_app
from lladauni.tools.runtime import Limits
from lladauni.tools.service import ToolService

from .tools_fixtures import data_url, running

ROOT = Path(__file__).resolve().parents[1]


def _png(content) -> Image.Image:
    [img] = [c for c in content if c.type == "image"]
    assert img.mime_type == "image/png"
    with Image.open(io.BytesIO(base64.b64decode(img.data))) as im:
        return im.convert("RGB")


def test_stdio_lists_and_calls_every_tool_on_the_tiny_model(tiny_ckpt, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(allowed / "red.png")
    params = StdioServerParameters(command=sys.executable, cwd=str(ROOT), args=[
        "-m", "lladauni.tools.cli", "mcp", "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--preset", "tiny",
        "--allow-path", str(allowed), "--out-dir", str(tmp_path / "out")])

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert sorted(tools) == sorted(TOOLS)
            schema = tools["generate_image"].input_schema
            assert schema["required"] == ["prompt"] and schema["properties"]["steps"]["maximum"] == 256

            seen: list[float] = []

            async def progress(p: float, total, message) -> None:
                seen.append(p)

            r = await c.call_tool("generate_image", {"prompt": "a fox", "size": "256x256", "steps": 2, "decoder_steps": 2,
                                                     "seed": 7}, progress_callback=progress)
            assert not r.is_error and _png(r.content).size == (256, 256)
            assert Path(r.structured_content["paths"][0]).is_file() and r.structured_content["seed"] == 7
            assert seen and seen == sorted(seen) and len(set(seen)) == len(seen)  # progress, increasing

            r = await c.call_tool("understand_image", {"image": str(allowed / "red.png"), "question": "colour?",
                                                       "max_tokens": 32, "steps": 2})
            assert not r.is_error and r.structured_content["text"]
            r = await c.call_tool("edit_image", {"image": data_url(64), "instruction": "make it blue", "steps": 2,
                                                 "decoder_steps": 2})
            assert not r.is_error  # a noisy 1024x1024 PNG is over the 2 MiB inline limit: a path, no image block
            with Image.open(r.structured_content["paths"][-1]) as im:
                assert im.size[0] >= 256 and len([x for x in r.content if x.type == "image"]) == (
                    Path(r.structured_content["paths"][-1]).stat().st_size <= 2 * 1024 * 1024)
            r = await c.call_tool("reason_visually", {"task": "draw a fox", "mode": "refine", "max_rounds": 1})
            assert not r.is_error and r.structured_content["status"] in ("done", "capped")
            assert Path(r.structured_content["trace"]).is_file()
            r = await c.call_tool("run_workflow", {"name": "draw-check-refine", "inputs": {"prompt": "fox", "max_rounds": 1}})
            assert not r.is_error and r.structured_content["status"] in ("done", "capped"), r.structured_content
            # the fix edits the re-encoded pixels (inspection by looking), so the result is the tiny model's
            # 1024 px: inline only when its PNG fits the 2 MiB limit, a path always
            final = Path(r.structured_content["paths"][-1])
            assert final.is_file() and len([x for x in r.content if x.type == "image"]) == (
                final.stat().st_size <= 2 * 1024 * 1024)

            bad = await c.call_tool("understand_image", {"image": "/etc/passwd"})
            assert bad.is_error and "allowed root" in bad.content[0].text
            bad = await c.call_tool("generate_image", {"prompt": "x", "size": "100x100"})
            assert bad.is_error and "unsupported size" in bad.content[0].text
            bad = await c.call_tool("run_workflow", {"name": "nope"})
            assert bad.is_error and "unknown workflow" in bad.content[0].text

    asyncio.run(asyncio.wait_for(main(), 150))


def test_streamable_http_with_a_token(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    svc = ToolService(ScriptedBackend(size=64, replies={"understand": "a red square", "chat": "4"}), out_dir=tmp_path / "out",
                      limits=Limits(allowed_roots=(allowed,)))
    app = mcp_http_app(svc, build_mcp_server(svc, inline_limit=10), api_key="tok")  # inline_limit: paths only
    with running(svc, app=app) as base:
        url = base + "/mcp"

        async def main() -> None:
            async with httpx2.AsyncClient() as anon:
                assert (await anon.post(url, json={})).status_code == 401
            http = httpx2.AsyncClient(headers={"Authorization": "Bearer tok"}, timeout=30)
            async with Client(streamable_http_client(url, http_client=http)) as c:
                assert sorted(t.name for t in (await c.list_tools()).tools) == sorted(TOOLS)
                calls = {"generate_image": {"prompt": "a fox", "size": "256x256"},
                         "edit_image": {"image": data_url(), "instruction": "blue"},
                         "understand_image": {"image": data_url()},
                         "reason_visually": {"task": "what is 2+2?", "images": [data_url()]},
                         "run_workflow": {"name": "draw-check-refine", "inputs": {"prompt": "fox", "max_rounds": 1}}}
                for name, args in calls.items():
                    r = await c.call_tool(name, args)
                    assert not r.is_error, (name, r.content)
                    assert all(x.type == "text" for x in r.content)  # over inline_limit: file paths instead
                    for p in r.structured_content["paths"]:
                        assert Path(p).is_file()
                r = await c.call_tool("understand_image", {"image": data_url()})
                assert r.structured_content["text"] == "a red square"
            await http.aclose()

        asyncio.run(asyncio.wait_for(main(), 60))
    with pytest.raises(ValueError, match="reachable from other machines"):
        mcp_http_app(svc, build_mcp_server(svc), host="0.0.0.0")
