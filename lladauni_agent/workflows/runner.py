"""``run_workflow``: load, validate, compile and run a workflow on a backend, with the agent
layer's checkpointers, run directory, stream events and trace/report files.

    result = run_workflow("draw-check-refine", {"prompt": "a red fox"}, LocalBackend("ckpt"), run_dir="out")
    result.status, result.state["outputs"], result.report_path

The run directory gets ``run.json`` (workflow path, inputs, thread id), so ``resume_workflow``
needs only that directory, the backend and the same checkpoint file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from ..agent import RunResult, drive_graph, make_checkpointer
from ..artifacts import ArtifactStore
from . import schema as S
from .compiler import WorkflowContext, compile_workflow
from .loader import Workflow, did_you_mean, load_workflow

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
    for k in dict(inputs or {}):  # refuse unknown inputs before anything runs (types are checked in the graph)
        if k not in wf.spec.inputs:
            raise ValueError(f"unknown input {k!r} for workflow {wf.name!r}; {did_you_mean(k, list(wf.spec.inputs))}")
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
            "overrides": json.loads(json.dumps(overrides, default=str))}
    (out / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
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
    """Continue a run that stopped (a crash, a kill) from its last checkpoint in ``checkpoint``;
    completed nodes are not run again. A finished run is returned as it is."""
    out = Path(run_dir)
    try:
        meta = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no workflow run in {out} (run.json is missing)") from None
    wf = load_workflow(meta["workflow"], functions=functions)
    checkpointer = make_checkpointer(checkpoint)
    try:
        graph = compile_workflow(wf, checkpointer=checkpointer)
        config = {"configurable": {"thread_id": meta["thread_id"]}}
        snap = graph.get_state(config)
        if not snap.values:
            raise ValueError(f"thread {meta['thread_id']!r} has no checkpoint in {checkpoint}")
        if not snap.next:
            return RunResult(meta["thread_id"], out, snap.values.get("status", "done"), dict(snap.values))
        ctx = _context(wf, backend, out, meta["seed"], meta["overrides"])
        return _drive(graph, wf, None, meta["thread_id"], out, ctx, on_event)
    finally:
        if getattr(checkpointer, "conn", None) is not None:
            checkpointer.conn.close()
