"""``Agent``: run a graph on a backend with one call, durable when given a SQLite file.

    agent = Agent(LocalBackend("inclusionAI/LLaDA2.0-Uni"), checkpoint="runs/agent.sqlite")
    result = agent.run("a red fox in snow", graph="draw_inspect_refine")
    result.best_image, result.report_path

Each run has a thread id (its key in the checkpointer) and a run directory ``runs_dir/<thread>``
holding its images, ``run.json`` (graph and options, so ``resume(thread_id)`` needs nothing
else), ``trace.json`` and ``report.html``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from .artifacts import ArtifactStore
from .context import AgentContext
from .durable import CallJournal, ChecksummedSerializer, ResumeError, StateFileError, open_state_db, write_atomic
from .graph import DEFAULT_MAX_ITERATIONS, GRAPHS, build_graph
from .report import write_run_files

__all__ = ["Agent", "FINISHED", "ResumeError", "RunResult", "StateFileError", "continue_graph", "drive_graph",
           "make_checkpointer"]

FINISHED = ("done", "capped", "failed", "stopped")  # a run's final statuses; anything else can go on

_THREAD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _serde():
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    # strict msgpack: state is primitives only, so nothing else may be revived from a checkpoint
    return JsonPlusSerializer(pickle_fallback=False, allowed_msgpack_modules=None)


def make_checkpointer(checkpoint: Union[str, os.PathLike, None]):
    """``None`` -> an in-memory saver; a path -> a SQLite saver on that file (created if missing),
    after the file passed its integrity checks (``durable.open_state_db``); every blob is checksummed."""
    if checkpoint is None:
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver(serde=_serde())
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(checkpoint)
    return SqliteSaver(open_state_db(path), serde=ChecksummedSerializer(_serde(), str(path)))


@dataclass
class RunResult:
    """status: done | capped | failed | stopped | interrupted (waiting for ``resume``)."""

    thread_id: str
    run_dir: Path
    status: str
    state: dict[str, Any]
    interrupt: Any = None
    events: list[dict] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.state.get("answer", "")

    @property
    def error(self) -> Optional[str]:
        return self.state.get("error")

    def _abs(self, ref: Optional[Mapping[str, Any]]) -> Optional[Path]:
        if not ref or not ref.get("png"):
            return None
        return ArtifactStore(self.run_dir).path(ref["png"])

    @property
    def images(self) -> list[Path]:
        return [p for p in (self._abs(r) for r in self.state.get("images", [])) if p is not None]

    @property
    def best_image(self) -> Optional[Path]:
        return self._abs(self.state.get("best"))

    @property
    def trace_path(self) -> Path:
        return self.run_dir / "trace.json"

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"


def drive_graph(graph: Any, payload: Any, config: dict, ctx: Any, run_dir: Path,
                on_event: Optional[Callable[[dict], None]]) -> RunResult:
    """Stream one run (or resumption) of a compiled graph to its end or next interrupt.

    Model calls go through a ``CallJournal`` in ``run_dir/calls`` (removed once the run has
    finished), so a rerun node gets the results its killed predecessor already had. Custom
    events are collected and every stream part goes to ``on_event``; on an exception the run
    files are written from the last checkpoint before it propagates; an interrupted run's files
    are written too. Shared by agent graphs and compiled workflows.
    """
    thread_id = config["configurable"]["thread_id"]
    if not isinstance(ctx.backend, CallJournal):
        ctx = dataclasses.replace(ctx, backend=CallJournal(ctx.get_backend(), Path(run_dir) / "calls"))
    events: list[dict] = []
    try:
        for part in graph.stream(payload, config, context=ctx, stream_mode=["updates", "custom"],
                                 version="v2", durability="sync"):
            if part["type"] == "custom":
                events.append(part["data"])
            if on_event is not None:
                on_event(part)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error matters more than the trace
            snap = graph.get_state(config)
            if snap.values:
                write_run_files(run_dir, {**snap.values, "status": "interrupted-by-exception"})
        raise
    snap = graph.get_state(config)
    state = dict(snap.values)
    status = state.get("status", "running")
    interrupt_value = None
    if snap.next:
        status = "interrupted"
        interrupt_value = snap.interrupts[0].value if snap.interrupts else None
        write_run_files(run_dir, {**state, "status": status})
    elif status in FINISHED:
        shutil.rmtree(Path(run_dir) / "calls", ignore_errors=True)
    return RunResult(thread_id, run_dir, status, state, interrupt_value, events)


def state_file_name(checkpoint: Union[str, os.PathLike, None]) -> Optional[str]:
    """How run.json records where a run keeps its checkpoints (an absolute path, or None: memory)."""
    return None if checkpoint is None else str(Path(checkpoint).resolve())


def continue_graph(graph: Any, config: dict, ctx: Any, run_dir: Path, on_event: Optional[Callable[[dict], None]], *,
                   value: Any = None, start: Any = None, state_file: Optional[str] = None,
                   run_state_file: Any = False) -> RunResult:
    """Resume a thread from its last checkpoint, whatever point it was killed at.

    A finished run is returned as it is. A run with no checkpoint yet (killed before its first
    one) starts again from ``start``, the request saved in ``run.json``. A run whose last node
    finished but whose next checkpoint was never written (LangGraph then reports nothing left to
    run) goes on from the node's saved writes: the status, not LangGraph's empty ``next``, says
    whether a run is over. ``value`` answers a pending human review. ``state_file`` is where this
    resumption reads checkpoints (None: memory), ``run_state_file`` where the run wrote them (as
    run.json records it; False: not recorded). Anything that makes the run impossible to resume
    raises ``ResumeError`` (or ``StateFileError``) with the reason.
    """
    from langgraph.types import Command

    thread_id = config["configurable"]["thread_id"]
    if run_state_file is not False and run_state_file != state_file:
        where = f"the state file {run_state_file}" if run_state_file else "memory (no state file)"
        raise ResumeError(thread_id, f"it kept its checkpoints in {where}, not in {state_file or 'memory'}",
                          f"resume with --state-db {run_state_file}" if run_state_file else "start the run again")
    try:
        snap = graph.get_state(config)
    except StateFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint, named with its cause
        raise ResumeError(thread_id, f"its checkpoint in {state_file} cannot be read ({type(exc).__name__}: {exc})",
                          "move the state file away and start the run again") from exc
    if not snap.values:  # killed before its first checkpoint: start again from the saved request
        if start is None or state_file is None:
            raise ResumeError(thread_id, f"{state_file or 'memory'} holds no checkpoint of it",
                              "resume with the state file the run used (--state-db), or start the run again")
        return drive_graph(graph, start, config, ctx, run_dir, on_event)
    status = snap.values.get("status")
    if not snap.next and status in FINISHED:  # finished (perhaps killed just after): the journal is spent
        shutil.rmtree(Path(run_dir) / "calls", ignore_errors=True)
        return RunResult(thread_id, run_dir, status, dict(snap.values))
    if value is not None and not snap.interrupts:
        raise ResumeError(thread_id, "it is not waiting for a review", "resume it without a review value")
    result = drive_graph(graph, Command(resume=value) if snap.interrupts else None, config, ctx, run_dir, on_event)
    if result.status not in FINISHED and result.status != "interrupted":
        write_run_files(run_dir, result.state)
        raise ResumeError(thread_id, f"the graph stopped with status {result.status!r} and nothing left to run",
                          f"this is a bug: please report it with {Path(run_dir) / 'trace.json'}")
    return result


def read_run_meta(run_dir: Path, thread_id: str, what: str = "run") -> dict:
    """``run.json`` of a run directory, or a ``ResumeError`` saying why it cannot be read."""
    path = Path(run_dir) / "run.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(thread_id, f"there is no {what} in {run_dir} ({path.name} is missing)",
                          "check the runs directory and the thread id") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(thread_id, f"{path} is unreadable ({exc})", "start the run again") from None
    if not isinstance(meta, dict):
        raise ResumeError(thread_id, f"{path} does not hold a run description", "start the run again")
    return meta


class Agent:
    """Runs the agent graphs on one backend.

    checkpoint: ``None`` keeps checkpoints in memory (resumable within this process), a path keeps
    them in SQLite (resumable after a crash). ``*_options`` are keyword arguments for the model
    calls (e.g. ``image_options={"image_h": 512, "image_w": 512, "steps": 8}``).
    """

    def __init__(
        self,
        backend: Any,
        *,
        runs_dir: Union[str, os.PathLike] = "runs",
        checkpoint: Union[str, os.PathLike, None] = None,
        text_options: Optional[Mapping[str, Any]] = None,
        image_options: Optional[Mapping[str, Any]] = None,
        edit_options: Optional[Mapping[str, Any]] = None,
        interleaved_options: Optional[Mapping[str, Any]] = None,
        seed: Optional[int] = 0,
    ) -> None:
        self.backend = backend
        self.runs_dir = Path(runs_dir)
        self.checkpointer = make_checkpointer(checkpoint)
        self.state_file = state_file_name(checkpoint)
        self.options = dict(text_options=dict(text_options or {}), image_options=dict(image_options or {}),
                            edit_options=dict(edit_options or {}), interleaved_options=dict(interleaved_options or {}))
        self.seed = seed
        self._graphs: dict[tuple, Any] = {}

    # -- plumbing
    def graph(self, kind: str, **options: Any):
        """The compiled graph (cached per kind and options) bound to this agent's checkpointer."""
        key = (kind, tuple(sorted(options.items())))
        if key not in self._graphs:
            self._graphs[key] = build_graph(kind, checkpointer=self.checkpointer, **options)
        return self._graphs[key]

    def _run_dir(self, thread_id: str) -> Path:
        if not isinstance(thread_id, str) or not _THREAD.match(thread_id):
            raise ValueError(f"thread_id={thread_id!r}: letters, digits, '_', '.', '-' only (it names a directory)")
        return self.runs_dir / thread_id

    def _context(self, run_dir: Path) -> AgentContext:
        return AgentContext(backend=self.backend, run_dir=str(run_dir), seed=self.seed,
                            **{k: dict(v) for k, v in self.options.items()})

    def _drive(self, kind: str, options: dict, thread_id: str, payload: Any, cap: int,
               on_event: Optional[Callable[[dict], None]]) -> RunResult:
        run_dir = self._run_dir(thread_id)
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 40 + 12 * cap}
        return drive_graph(self.graph(kind, **options), payload, config, self._context(run_dir), run_dir, on_event)

    # -- public
    def run(
        self,
        prompt: str,
        *,
        images: Sequence[Any] = (),
        graph: str = "draw_inspect_refine",
        thread_id: Optional[str] = None,
        max_iterations: Optional[int] = None,
        claims: Optional[Sequence[str]] = None,
        on_event: Optional[Callable[[dict], None]] = None,
        **graph_options: Any,
    ) -> RunResult:
        """Run ``graph`` on ``prompt`` (and input ``images``: paths or PIL images).

        An existing ``thread_id`` whose run did not finish is refused: use ``resume``.
        ``graph_options`` go to ``build_graph`` (human_review, retokenize, planner, refine, ...).
        ``on_event`` receives every stream part (node updates and custom progress/image events).
        """
        if graph not in GRAPHS:
            raise ValueError(f"unknown graph {graph!r}; choose from {', '.join(GRAPHS)}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        thread_id = thread_id or uuid.uuid4().hex[:16]
        run_dir = self._run_dir(thread_id)
        if (run_dir / "run.json").exists():
            raise ValueError(f"thread {thread_id!r} already exists in {self.runs_dir}; resume it or pick a new id")
        store = ArtifactStore(run_dir)
        refs = []
        for im in images:
            refs.append(store.put(image=im, origin="input") if hasattr(im, "convert") else store.put_file(im))
        cap = max_iterations if max_iterations is not None else graph_options.get("max_iterations", DEFAULT_MAX_ITERATIONS[graph])
        payload: dict[str, Any] = {"prompt": prompt, "inputs": refs}
        if max_iterations is not None:
            payload["max_iterations"] = max_iterations
        if claims:
            payload["claims"] = [str(c) for c in claims]
        # the request travels with the run, so a run killed before its first checkpoint can start again
        write_atomic(run_dir / "run.json", json.dumps({"graph": graph, "options": graph_options, "payload": payload,
                                                       "state_file": self.state_file}))
        return self._drive(graph, graph_options, thread_id, payload, int(cap) if isinstance(cap, int) else 1, on_event)

    def resume(self, thread_id: str, value: Any = None, *, on_event: Optional[Callable[[dict], None]] = None) -> RunResult:
        """Continue a thread: after a crash or a kill at any point (``value=None``: completed
        nodes and model calls are not run again) or at a human review (``value`` = "approve" |
        "stop" | {"action": "edit", "prompt": ...}). A finished run is returned as it is; a run that
        cannot resume raises ``ResumeError`` saying why and what to do."""
        run_dir = self._run_dir(thread_id)
        meta = read_run_meta(run_dir, thread_id)
        kind, options = meta.get("graph"), meta.get("options")
        if kind not in GRAPHS or not isinstance(options, dict):
            raise ResumeError(thread_id, f"{run_dir / 'run.json'} names no known graph ({kind!r})", "start the run again")
        graph = self.graph(kind, **options)
        cap = int(options.get("max_iterations") or DEFAULT_MAX_ITERATIONS[kind])
        start = meta.get("payload")
        if isinstance(start, dict) and isinstance(start.get("max_iterations"), int):
            cap = start["max_iterations"]
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": 40 + 12 * cap}
        return continue_graph(graph, config, self._context(run_dir), run_dir, on_event, value=value,
                              start=start, state_file=self.state_file, run_state_file=meta.get("state_file", False))

    def stream(self, prompt: str, **kwargs: Any) -> Iterator[dict]:
        """``run`` as an iterator of stream parts; the last item is ``{"type": "result", "data": RunResult}``."""
        import queue
        import threading

        q: queue.Queue = queue.Queue()
        done = object()

        def work() -> None:
            try:
                q.put({"type": "result", "data": self.run(prompt, on_event=q.put, **kwargs)})
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                q.put(exc)
            q.put(done)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        t.join()

    async def arun(self, prompt: str, **kwargs: Any) -> RunResult:
        """``run`` without blocking the event loop (model calls stay serialised per device)."""
        return await asyncio.to_thread(self.run, prompt, **kwargs)

    async def aresume(self, thread_id: str, value: Any = None, **kwargs: Any) -> RunResult:
        return await asyncio.to_thread(self.resume, thread_id, value, **kwargs)

    def close(self) -> None:
        conn = getattr(self.checkpointer, "conn", None)
        if conn is not None:
            conn.close()
