"""``run_workflow``: load, validate, compile and run a workflow on a backend, with the agent
layer's checkpointers, run directory, stream events and trace/report files.

    result = run_workflow("draw-check-refine", {"prompt": "a red fox"}, LocalBackend("ckpt"), run_dir="out")
    result.status, result.state["outputs"], result.report_path

The run directory gets ``run.json`` (workflow path, inputs, thread id), so ``resume_workflow``
needs only that directory, the backend and the same checkpoint file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from ..agent import (ResumeError, RunResult, continue_graph, drive_graph, make_checkpointer, read_run_meta,
                     state_file_name)
from ..artifacts import ArtifactStore
from ..durable import write_atomic
from . import schema as S
from .compiler import WorkflowContext, compile_workflow
from .loader import Workflow, load_workflow

__all__ = ["run_workflow", "resume_workflow"]

_KINDS = ("text", "image", "edit", "interleaved")


def _step_bound(wf: Workflow) -> int:
    """Graph steps a run can take (dynamic loop caps count as the hard maximum)."""

    def cost(name: str) -> int:
        node = wf.spec.nodes[name]
        if isinstance(node, S.LoopNode):
            cap = node.max_iterations if isinstance(node.max_iterations, int) else 1000
            return 1 + cap * (1 + sum(cost(m) for m in node.body))
        return 3 if getattr(node, "for_each", None) else 1  # a fan-out: send, the parallel tasks, gather

    body = {m for n in wf.spec.nodes.values() if isinstance(n, S.LoopNode) for m in n.body}
    return 3 + sum(cost(n) for n in wf.spec.nodes if n not in body)


def _drive(graph: Any, wf: Workflow, payload: Any, thread_id: str, run_dir: Path, ctx: WorkflowContext,
           on_event: Optional[Callable[[dict], None]]) -> RunResult:
    config = {"configurable": {"thread_id": thread_id}, "recursion_limit": min(10_000, 20 + 2 * _step_bound(wf))}
    return drive_graph(graph, payload, config, ctx, run_dir, on_event)


def _context(wf: Workflow, backend: Any, run_dir: Path, seed: Any, overrides: Mapping[str, Mapping[str, Any]]) -> WorkflowContext:
    be = wf.spec.backend
    opts = {k: {**getattr(be, k).model_dump(exclude_none=True), **dict(overrides.get(k, {}))} for k in _KINDS}
    return WorkflowContext(backend=backend, run_dir=str(run_dir), seed=be.seed if seed == "workflow" else seed,
                           text_options=opts["text"], image_options=opts["image"], edit_options=opts["edit"],
                           interleaved_options=opts["interleaved"],
                           overrides={k: dict(v) for k, v in overrides.items() if v})


def run_workflow(
    workflow: Union[str, os.PathLike, Workflow],
    inputs: Optional[Mapping[str, Any]] = None,
    backend: Any = None,
    *,
    agent: Any = None,
    run_dir: Union[str, os.PathLike, None] = None,
    runs_dir: Union[str, os.PathLike] = "runs",
    thread_id: Optional[str] = None,
    checkpoint: Union[str, os.PathLike, None] = None,
    text_options: Optional[Mapping[str, Any]] = None,
    image_options: Optional[Mapping[str, Any]] = None,
    edit_options: Optional[Mapping[str, Any]] = None,
    interleaved_options: Optional[Mapping[str, Any]] = None,
    seed: Any = "workflow",
    functions: Optional[Mapping[str, Callable[..., Any]]] = None,
    on_event: Optional[Callable[[dict], None]] = None,
) -> RunResult:
    """Run a workflow (a path, a bundled name, or a loaded ``Workflow``) on ``inputs``.

    backend: a ``Backend``; or pass ``agent=Agent(...)`` to use its backend, checkpointer, runs
    directory, model options and seed. run_dir: where images, run.json, trace.json and
    report.html go (default ``runs_dir/<thread_id>``). checkpoint: a SQLite file for durable,
    resumable runs (default: in memory). ``*_options`` beat the workflow's ``backend:`` settings
    and node options. seed: ``"workflow"`` uses the file's ``backend.seed``. Invalid workflows
    raise ``WorkflowError`` before anything runs; bad inputs raise ``ValueError``.
    """
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow, functions=functions)
    overrides = {"text": text_options or {}, "image": image_options or {}, "edit": edit_options or {},
                 "interleaved": interleaved_options or {}}
    if agent is not None:
        backend = agent.backend
        checkpointer = agent.checkpointer
        runs_dir = agent.runs_dir
        overrides = {k: {**agent.options[f"{k}_options"], **overrides[k]} for k in _KINDS}
        seed = agent.seed if seed == "workflow" else seed
    else:
        checkpointer = make_checkpointer(checkpoint)
    if backend is None:
        raise ValueError("run_workflow needs a backend (or agent=Agent(backend))")
    wf.check_inputs(inputs)  # unknown, missing or wrong-typed inputs: ValueError before anything runs
    thread_id = thread_id or uuid.uuid4().hex[:16]
    out = Path(run_dir) if run_dir is not None else Path(runs_dir) / thread_id
    if (out / "run.json").exists():
        raise ValueError(f"{out} already holds a run; resume it with resume_workflow or choose another directory")
    store = ArtifactStore(out)
    raw: dict[str, Any] = {}
    for k, v in dict(inputs or {}).items():  # pixels never enter state: PIL images become files first
        if hasattr(v, "convert"):
            v = store.put(image=v, origin="input")
        elif isinstance(v, (list, tuple)):
            v = [store.put(image=x, origin="input") if hasattr(x, "convert") else x for x in v]
        raw[k] = v
    meta = {"kind": "workflow", "workflow": wf.source, "name": wf.name, "thread_id": thread_id,
            "inputs": json.loads(json.dumps(raw, default=str)), "seed": seed,
            "overrides": json.loads(json.dumps(overrides, default=str)), "spec_digest": _spec_digest(wf),
            "state_file": agent.state_file if agent is not None else state_file_name(checkpoint)}
    write_atomic(out / "run.json", json.dumps(meta, indent=2))
    graph = compile_workflow(wf, checkpointer=checkpointer)
    try:
        return _drive(graph, wf, {"inputs": raw}, thread_id, out, _context(wf, backend, out, seed, overrides), on_event)
    finally:
        if agent is None and getattr(checkpointer, "conn", None) is not None:
            checkpointer.conn.close()


def resume_workflow(
    run_dir: Union[str, os.PathLike],
    backend: Any,
    *,
    checkpoint: Union[str, os.PathLike],
    functions: Optional[Mapping[str, Callable[..., Any]]] = None,
    on_event: Optional[Callable[[dict], None]] = None,
) -> RunResult:
    """Continue a run that stopped (a crash, a kill at any point) from its last checkpoint in
    ``checkpoint``; completed nodes and model calls are not run again. A finished run is returned
    as it is; a run that cannot resume raises ``ResumeError`` with the reason and what to do."""
    out = Path(run_dir)
    meta = read_run_meta(out, str(out.name), "workflow run")
    thread_id = meta.get("thread_id")
    if not isinstance(thread_id, str) or not isinstance(meta.get("workflow"), str):
        raise ResumeError(str(out.name), f"{out / 'run.json'} names no workflow or thread", "start the run again")
    wf = load_workflow(meta["workflow"], functions=functions)
    if meta.get("spec_digest") not in (None, _spec_digest(wf)):
        raise ResumeError(thread_id, f"the workflow {meta['workflow']} changed since the run started",
                          "restore the file as it was, or start a new run")
    checkpointer = make_checkpointer(checkpoint)
    try:
        graph = compile_workflow(wf, checkpointer=checkpointer)
        config = {"configurable": {"thread_id": thread_id},
                  "recursion_limit": min(10_000, 20 + 2 * _step_bound(wf))}
        ctx = _context(wf, backend, out, meta.get("seed"), meta.get("overrides") or {})
        return continue_graph(graph, config, ctx, out, on_event, start={"inputs": meta.get("inputs") or {}},
                              state_file=state_file_name(checkpoint), run_state_file=meta.get("state_file", False))
    finally:
        if getattr(checkpointer, "conn", None) is not None:
            checkpointer.conn.close()


def _spec_digest(wf: Workflow) -> str:
    """What the run's graph was compiled from: resuming under another spec would mix two graphs."""
    return hashlib.sha256(wf.spec.model_dump_json().encode()).hexdigest()
