"""Shared helpers for the agent tests (fixtures are imported by the test modules that use them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lladauni.agent import Agent, LocalBackend, ScriptedBackend
from lladauni.agent.context import TINY_OPTIONS


@pytest.fixture(scope="session")
def tiny_backend(tiny_ckpt) -> LocalBackend:
    """The tiny checkpoint loaded once (backbone, image tokenizer, decoder) on CPU."""
    b = LocalBackend(tiny_ckpt, device="cpu")
    b.load()
    return b


def tiny_agent(backend: Any, tmp_path: Path, **kw: Any) -> Agent:
    return Agent(backend, runs_dir=tmp_path / "runs", text_options=TINY_OPTIONS["text"],
                 image_options=TINY_OPTIONS["image"], edit_options=TINY_OPTIONS["edit"],
                 interleaved_options=TINY_OPTIONS["interleaved"], **kw)


def scripted_agent(tmp_path: Path, checkpoint: Any = None, **backend_kw: Any) -> tuple[Agent, ScriptedBackend]:
    b = ScriptedBackend(**backend_kw)
    return Agent(b, runs_dir=tmp_path / "runs", checkpoint=checkpoint), b


def comparable(state: dict) -> dict:
    """State without wall-clock fields, as JSON-able data."""
    s = json.loads(json.dumps(state))
    for ev in s.get("timeline", []):
        ev.pop("seconds", None)
    return s


def methods(backend: ScriptedBackend) -> list[str]:
    return [m for m, _ in backend.calls]
