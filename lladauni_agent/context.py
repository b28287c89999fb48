"""Run-time context: what nodes need but state must not hold (the backend, the run directory,
generation options). Passed as ``context_schema`` and read through ``Runtime``.

Under ``langgraph dev`` the context arrives as JSON, so ``backend`` may be missing: it is then
built once per process from ``server`` / ``checkpoint`` (or the ``LLADAUNI_SERVER`` /
``LLADAUNI_CHECKPOINT`` environment variables), and from the embedded default model when none is set.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .artifacts import ArtifactStore

__all__ = ["AgentContext", "SHAPES_OPTIONS", "TINY_OPTIONS", "checkpoint_options"]

# The sizes the CPU tests use on a tiny checkpoint.
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "text": {"steps": 2, "gen_length": 32},
    "image": {"image_h": 256, "image_w": 256, "steps": 2, "decoder_steps": 2, "thinking_steps": 2,
              "thinking_gen_length": 32},
    "edit": {"steps": 2, "decoder_steps": 2},
    "interleaved": {"image_h": 256, "image_w": 256, "text_gen_length": 32, "steps": 2, "image_steps": 2,
                    "decoder_steps": 2},
}

def checkpoint_options(checkpoint_dir: Any) -> dict[str, dict[str, Any]]:
    """A checkpoint's own defaults (``lladauni.json``) per agent call kind (text, image, edit,
    interleaved), image sizes included; {} per kind when it ships none."""
    from lladauni.model_core.pipeline import read_defaults

    d = read_defaults(checkpoint_dir)
    opts = d.get("options", {})
    size = dict(zip(("image_h", "image_w"), d["image_size"])) if "image_size" in d else {}
    return {"text": dict(opts.get("chat", {})), "image": {**size, **opts.get("image", {})}, "edit": dict(opts.get("edit", {})),
            "interleaved": {**size, **opts.get("interleaved", {})}}


def _embedded_options() -> dict[str, dict[str, Any]]:
    from lladauni.model_core.checkpoint import CheckpointError, default_checkpoint

    try:
        return checkpoint_options(default_checkpoint())
    except CheckpointError:
        return {"text": {}, "image": {}, "edit": {}, "interleaved": {}}


# What the embedded default model (the tiny shapes model, model_core/data/shapes-tiny) runs with:
# read from its lladauni.json (96x96 images, its steps and lengths), the one place they are written.
# LLaDAUni applies them by itself; this view is for callers that pass options explicitly.
SHAPES_OPTIONS: dict[str, dict[str, Any]] = _embedded_options()

_SHARED: dict[tuple, Any] = {}
_SHARED_LOCK = threading.Lock()


@dataclass
class AgentContext:
    """backend: a ``Backend``; run_dir: where images, trace.json and report.html go (all file
    access stays under it); ``*_options``: keyword arguments for each kind of model call;
    seed: base seed (redraws use seed + iteration)."""

    backend: Any = None
    run_dir: str = "runs/default"
    text_options: dict[str, Any] = field(default_factory=dict)
    image_options: dict[str, Any] = field(default_factory=dict)
    edit_options: dict[str, Any] = field(default_factory=dict)
    interleaved_options: dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = 0
    server: Optional[str] = None
    checkpoint: Optional[str] = None

    def get_backend(self) -> Any:
        if self.backend is not None:
            return self.backend
        server = self.server or os.environ.get("LLADAUNI_SERVER")
        ckpt = self.checkpoint or os.environ.get("LLADAUNI_CHECKPOINT")
        key = ("http", server) if server else ("local", ckpt)
        if key[1] is None:  # neither given: the embedded default model, when this install has it
            from lladauni.model_core.checkpoint import CheckpointError, default_checkpoint

            try:
                default_checkpoint()
            except CheckpointError as exc:
                raise ValueError(f"no backend: pass one in the context, set LLADAUNI_SERVER or LLADAUNI_CHECKPOINT "
                                 f"({exc})") from None
        with _SHARED_LOCK:
            if key not in _SHARED:
                from .backend import HTTPBackend, LocalBackend

                _SHARED[key] = HTTPBackend(server) if server else LocalBackend(ckpt)
            self.backend = _SHARED[key]
        return self.backend

    def store(self) -> ArtifactStore:
        return ArtifactStore(Path(self.run_dir))
