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
import json
import os
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from .artifacts import ArtifactStore
from .context import AgentContext
from .graph import DEFAULT_MAX_ITERATIONS, GRAPHS, build_graph
from .report import write_run_files

__all__ = ["Agent", "RunResult", "drive_graph", "make_checkpointer"]

_THREAD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _serde():
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    # strict msgpack: state is primitives only, so nothing else may be revived from a checkpoint
    return JsonPlusSerializer(pickle_fallback=False, allowed_msgpack_modules=None)


def make_checkpointer(checkpoint: Union[str, os.PathLike, None]):
    """``None`` -> an in-memory saver; a path -> a SQLite saver on that file (created if missing)."""
    if checkpoint is None:
        from langgraph.checkpoint.memory import InMemorySaver

        return InMemorySaver(serde=_serde())
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False), serde=_serde())


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

    Custom events are collected and every stream part goes to ``on_event``; on an exception the
    run files are written from the last checkpoint before it propagates; an interrupted run's
    files are written too. Shared by agent graphs and compiled workflows.
    """
    thread_id = config["configurable"]["thread_id"]
    events: list[dict] = []
    try:
        for part in graph.stream(payload, config, context=ctx, stream_mode=["updates", "custom"],
                                 version="v2", durability="sync"):
            if part["type"] == "custom":
                events.append(part["data"])
            if on_event is not None:
                on_event(part)
    except BaseException:
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
    return RunResult(thread_id, run_dir, status, state, interrupt_value, events)


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
        (run_dir / "run.json").write_text(json.dumps({"graph": graph, "options": graph_options}), encoding="utf-8")
        payload: dict[str, Any] = {"prompt": prompt, "inputs": refs}
        if max_iterations is not None:
            payload["max_iterations"] = max_iterations
        if claims:
            payload["claims"] = [str(c) for c in claims]
        return self._drive(graph, graph_options, thread_id, payload, int(cap) if isinstance(cap, int) else 1, on_event)

    def resume(self, thread_id: str, value: Any = None, *, on_event: Optional[Callable[[dict], None]] = None) -> RunResult:
        """Continue a thread: after a crash (``value=None``, it restarts at the first unfinished
        node) or at a human review (``value`` = "approve" | "stop" | {"action": "edit", "prompt": ...})."""
        from langgraph.types import Command

        run_dir = self._run_dir(thread_id)
        try:
            meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no run {thread_id!r} under {self.runs_dir}") from None
        kind, options = meta["graph"], meta["options"]
        snap = self.graph(kind, **options).get_state({"configurable": {"thread_id": thread_id}})
        if not snap.values:
            raise ValueError(f"thread {thread_id!r} has no checkpoint (was it run with another checkpoint file?)")
        if not snap.next:
            status = snap.values.get("status", "done")
            return RunResult(thread_id, run_dir, status, dict(snap.values))
        payload = Command(resume=value) if snap.interrupts else None
        cap = int(snap.values.get("max_iterations", DEFAULT_MAX_ITERATIONS[kind]))
        return self._drive(kind, options, thread_id, payload, cap, on_event)

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
