"""The five tools (generate_image, edit_image, understand_image, reason_visually, run_workflow)
over one backend and one ``ModelWorker``; the HTTP server, the MCP server and the LangChain
tools are thin shells around ``ToolService``.
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from pydantic import ValidationError

from .runtime import InputError, Limits, ModelWorker, RunFailed, check_request_data, load_image_ref
from .schemas import (TOOL_OPTIONS, EditImageArgs, GenerateImageArgs, ReasonArgs, UnderstandArgs, WorkflowArgs, parse_size,
                      validation_message)

__all__ = ["REASON_GRAPHS", "TOOLS", "ToolResult", "ToolService", "tool_args"]

REASON_GRAPHS = {"sketch": "visual_reasoning", "refine": "draw_inspect_refine", "interleaved": "interleaved_story"}
_KINDS = ("text", "image", "edit", "interleaved")

# name -> (typed arguments, ToolService method making the job, description): one table for MCP and LangChain
TOOLS: dict[str, tuple[type, str, str]] = {
    "generate_image": (GenerateImageArgs, "generate_image_job",
                       "Draw an image from a text prompt (optionally reasoning first with thinking=true)."),
    "edit_image": (EditImageArgs, "edit_image_job", "Edit an image following an instruction."),
    "understand_image": (UnderstandArgs, "understand_job", "Answer a question about an image."),
    "reason_visually": (ReasonArgs, "reason_job",
                        "Solve a task by drawing and inspecting sketches (an agent graph); returns the answer and the best image."),
    "run_workflow": (WorkflowArgs, "workflow_job", "Run a bundled or registered YAML workflow on inputs."),
}




class ToolResult(dict):
    """``{"text": str, "images": [PIL images], "paths": [str], ...meta}``: what a tool produced."""


class ToolService:
    """One model behind a bounded queue, with the five tools and the per-kind default options.

    defaults: model options per call kind (``text``, ``image``, ``edit``, ``interleaved``) applied
    under every request's own options (e.g. ``lladauni_agent.context.TINY_OPTIONS`` for tests).
    out_dir: generated files (bounded to ``keep_files``) and agent/workflow runs.
    workflows: extra workflow name -> YAML path (beside the bundled ones).
    """

    def __init__(
        self,
        backend: Any,
        *,
        limits: Optional[Limits] = None,
        defaults: Optional[Mapping[str, Mapping[str, Any]]] = None,
        out_dir: Union[str, os.PathLike] = "lladauni-out",
        workflows: Optional[Mapping[str, Union[str, os.PathLike]]] = None,
        keep_files: int = 256,
        model_name: Optional[str] = None,
    ) -> None:
        self.backend = backend
        self.limits = limits or Limits()
        self.worker = ModelWorker(backend, self.limits)
        self.defaults = {k: dict((defaults or {}).get(k, {})) for k in _KINDS}
        self.out_dir = Path(out_dir)
        self.files_dir = self.out_dir / "files"
        self.runs_dir = self.out_dir / "runs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.keep_files = keep_files
        self._model_name = model_name
        self._workflows = {str(k): Path(v) for k, v in (workflows or {}).items()}
        self._files_lock = threading.Lock()

    # -- helpers
    def options(self, kind: str, **opts: Any) -> dict:
        return {**self.defaults[kind], **{k: v for k, v in opts.items() if v is not None}}

    @functools.cached_property
    def model(self) -> dict:
        """What the backend says of its model (name, image sizes, decoder); asked on first use, so
        building the service does not load the weights."""
        return describe_backend(self.backend)

    @property
    def model_name(self) -> str:
        return self._model_name or self.model["name"]

    @property
    def max_image_side(self) -> int:
        """The largest output side a request may ask for: the service's limit, and no more than
        the loaded checkpoint's size tokens allow."""
        return min(self.limits.max_image_side, self.model.get("max_image_side") or self.limits.max_image_side)

    def check_size(self, h: int, w: int) -> None:
        side = self.max_image_side
        low = min(self.model.get("min_image_side") or 32, side)
        for name, v in (("height", h), ("width", w)):
            if v % 32 or not low <= v <= side:
                raise InputError(f"unsupported size {w}x{h}: {name} must be a multiple of 32 between {low} and {side}"
                                 + (f" for {self.model_name}" if self.model.get("max_image_side") else ""))

    def image(self, ref: Any, what: str = "image"):
        return ref if hasattr(ref, "convert") else load_image_ref(ref, self.limits, what)

    def save(self, image: Any) -> Path:
        """Write a PNG under ``files/`` (keeping the newest ``keep_files``) and return its path."""
        path = self.files_dir / f"{uuid.uuid4().hex}.png"
        tmp = path.with_suffix(".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
        with self._files_lock:
            files = sorted(self.files_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)
            for old in files[: max(0, len(files) - self.keep_files)]:
                old.unlink(missing_ok=True)
        return path

    def workflows(self) -> dict[str, Path]:
        from lladauni.agent.workflows import bundled_workflows

        return {**bundled_workflows(), **self._workflows}

    def register_workflow(self, name: str, path: Union[str, os.PathLike]) -> None:
        from lladauni.agent.workflows import load_workflow

        load_workflow(path)  # refuse an invalid file now, not at the first run
        self._workflows[name] = Path(path)

    # -- the five tools: each returns a function of the (guarded) backend to run on the worker
    def generate_image_job(self, a: GenerateImageArgs) -> Callable[[Any], ToolResult]:
        size: dict = {}
        if a.size is not None:
            h, w = parse_size_checked(a.size)
            self.check_size(h, w)
            size = {"image_h": h, "image_w": w}
        opts = self.options("image", **size, **tool_options(a), mode="thinking" if a.thinking else "normal")

        def job(backend: Any) -> ToolResult:
            r = backend.generate_image(a.prompt, **opts)
            return ToolResult(text=r.thinking or "", images=[r.image], seed=a.seed, size="{}x{}".format(*r.image.size),
                              seconds=round(r.stats.seconds, 3))

        return job

    def edit_image_job(self, a: EditImageArgs) -> Callable[[Any], ToolResult]:
        src = self.image(a.image)
        opts = self.options("edit", **tool_options(a))

        def job(backend: Any) -> ToolResult:
            r = backend.edit_image(src, a.instruction, **opts)
            return ToolResult(text="", images=[r.image], seed=a.seed, seconds=round(r.stats.seconds, 3))

        return job

    def understand_job(self, a: UnderstandArgs) -> Callable[[Any], ToolResult]:
        src = self.image(a.image)
        tokens = None if a.max_tokens is None else min(a.max_tokens, self.limits.max_tokens)
        opts = self.options("text", gen_length=tokens, **tool_options(a))

        def job(backend: Any) -> ToolResult:
            r = backend.understand(src, a.question, **opts)
            return ToolResult(text=r.text, images=[], seed=a.seed, seconds=round(r.stats.seconds, 3))

        return job

    def _agent(self, backend: Any, seed: Optional[int]):
        from lladauni.agent import Agent

        return Agent(backend, runs_dir=self.runs_dir, text_options=self.defaults["text"],
                     image_options=self.defaults["image"], edit_options=self.defaults["edit"],
                     interleaved_options=self.defaults["interleaved"], seed=0 if seed is None else seed)

    def reason_job(self, a: ReasonArgs, images: Optional[list] = None) -> Callable[[Any], ToolResult]:
        """``images``: already decoded PIL images (the HTTP server's), used instead of ``a.images``."""
        images = images if images is not None else [self.image(x, f"images[{i}]") for i, x in enumerate(a.images)]

        def job(backend: Any) -> ToolResult:
            r = self._agent(backend, a.seed).run(a.task, images=images, graph=REASON_GRAPHS[a.mode],
                                                 max_iterations=a.max_rounds)
            return _run_result(r, "agent")

        return job

    def workflow_job(self, a: WorkflowArgs) -> Callable[[Any], ToolResult]:
        from lladauni.agent.workflows import load_workflow, run_workflow

        known = self.workflows()
        if a.name not in known:
            raise InputError(f"unknown workflow {a.name!r}; choose from {', '.join(sorted(known))}", 404)
        wf = load_workflow(known[a.name])
        inputs = dict(a.inputs)
        for k, v in inputs.items():
            spec = wf.spec.inputs.get(k)
            if spec is not None and spec.type == "image":
                inputs[k] = self.image(v, f"inputs.{k}")
            elif spec is not None and spec.type == "images":
                if not isinstance(v, list) or len(v) > self.limits.max_images_per_request:
                    raise InputError(f"inputs.{k}: expected a list of at most {self.limits.max_images_per_request} images")
                inputs[k] = [self.image(x, f"inputs.{k}[{i}]") for i, x in enumerate(v)]
        thread = uuid.uuid4().hex[:16]
        seed = "workflow" if a.seed is None else a.seed

        def job(backend: Any) -> ToolResult:
            r = run_workflow(wf, inputs, backend, run_dir=self.runs_dir / thread, thread_id=thread, seed=seed,
                             text_options=self.defaults["text"], image_options=self.defaults["image"],
                             edit_options=self.defaults["edit"], interleaved_options=self.defaults["interleaved"])
            out = _run_result(r, "workflow")
            out["outputs"] = r.state.get("outputs", {})
            return out

        return job


def tool_args(model: type, raw: Any) -> Any:
    """A tool call's arguments (MCP, LangChain) -> ``model``, or ``InputError`` naming each bad
    field: an unknown one (with a did-you-mean), a wrong type or range, a lone surrogate. None
    values are "not given" (tool-calling models send them for optional fields)."""
    if not isinstance(raw, dict):
        raise InputError(f"the arguments must be an object, got {type(raw).__name__}")
    given = {k: v for k, v in raw.items() if v is not None}
    check_request_data(given)
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise InputError(validation_message(exc, model)) from None


def tool_options(a: Any) -> dict:
    """The task options a tool call carries (its ``TOOL_OPTIONS``), by the tool's args model."""
    tool = {GenerateImageArgs: "generate_image", EditImageArgs: "edit_image", UnderstandArgs: "understand_image"}[type(a)]
    return {name: getattr(a, name) for name in TOOL_OPTIONS[tool][1]}


def describe_backend(backend: Any) -> dict:
    """What the backend says of its model (``LocalBackend.describe``): name and image sizes; a
    backend that cannot say (HTTP, scripted) is "lladauni" with no size limits of its own."""
    describe = getattr(backend, "describe", None)
    return dict(describe()) if callable(describe) else {"name": "lladauni"}


def parse_size_checked(size: str) -> tuple[int, int]:
    try:
        return parse_size(size)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _run_result(r: Any, kind: str) -> ToolResult:
    """A finished run -> its ``ToolResult``; a run that did not finish (failed, or any status but
    done / capped) raises ``RunFailed`` with its error and thread id."""
    from PIL import Image

    if r.status not in ("done", "capped"):
        raise RunFailed(kind, r.status, r.error, r.thread_id, str(r.trace_path))
    paths = [str(p) for p in r.images]
    best = r.best_image
    images = []
    for p in ([best] if best else r.images[-1:]):
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return ToolResult(text=r.answer, images=images, paths=paths, status=r.status, error=r.error,
                      thread_id=r.thread_id, run_dir=str(r.run_dir), trace=str(r.trace_path))
