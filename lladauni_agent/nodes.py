"""The node runtime both graph builders share: the four Python graphs (``graph.py``) and the
compiled YAML workflows (``workflows/compiler.py``).

Helpers a node uses: ``event`` (a timeline event), ``call_model`` (one model call with progress
on the custom stream), ``image_input`` / ``store_image`` (images in and out of the run
directory), ``seed_for``, ``interleaved_segments``; ``guarded`` (an exception becomes a
readable ``error_update``) and ``is_ok``. The run's two ends: ``make_start`` (check the input,
or fail with the shared error shape) and ``make_finish`` (``publish_run``: trace.json,
report.html and the ``finished`` stream event; ``pixel_check_event``: the embedded shapes
model's pixel checker on every image, for the report).

Routing, and the LangGraph semantics it rests on (checked on langgraph 1.2 in this venv)::

    a node with a static edge a -> b that returns Command(goto="finish") runs b AND finish
    (finish then runs twice); a conditional edge out of it fires as well; a node with no
    outgoing edge that returns a plain update ends the run there.

Static edges and ``Command.goto`` are additive: a Command cannot cancel an edge. So a node that
can fail or stop the run has no outgoing edge at all: ``add_step`` wraps it (``routed``) to
return ``Command(update=..., goto=next)`` when the run is still fine after its update and
``Command(update=..., goto=finish)`` when it failed or stopped, and declares
``add_node(..., destinations=(next..., finish))`` so drawings show both ways. ``next`` is a node
name, or a function of the state after the update that branches (a route, a loop check, a
``Send`` fan-out). A node whose only successor is ``finish`` keeps a plain static edge: there
is nothing for a failure to skip.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable, Mapping, Optional, Union

from langgraph.errors import GraphBubbleUp
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from lladauni.model_core.options import MAX_SEED

from . import prompts
from .context import AgentContext
from .report import write_run_files
from .state import ImageRef, TimelineEvent

__all__ = ["event", "error_update", "is_ok", "guarded", "call_model", "store_image", "image_input", "seed_for",
           "interleaved_segments", "routed", "add_step", "make_start", "make_finish", "finished_status", "publish_run",
           "run_request", "pixel_check_event"]

Next = Union[str, Callable[[Mapping[str, Any]], Any]]


# ------------------------------------------------------------------------------ node helpers
def event(node: str, kind: str, state: Any, **kw: Any) -> TimelineEvent:
    """A timeline event of ``node`` at the state's iteration (``kw``: text, image, seconds, data)."""
    ev = TimelineEvent(node=node, kind=kind, iteration=int(state.get("iteration", 0)))
    ev.update(kw)  # type: ignore[typeddict-item]
    return ev


def error_update(node: str, state: Any, msg: str) -> dict:
    """The one shape of a failure: the message in ``error``, status failed, an error event."""
    return {"error": msg, "status": "failed", "timeline": [event(node, "error", state, text=msg)]}


def is_ok(state: Mapping[str, Any]) -> bool:
    """Neither failed nor stopped: the run goes on."""
    return not state.get("error") and state.get("status") not in ("stopped", "failed")


def guarded(node: str) -> Callable:
    """A node whose exceptions become a readable error in state instead of crashing the run.
    Interrupts (and other control flow LangGraph raises) pass through."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(state: Any, runtime: Runtime[AgentContext]) -> dict:
            try:
                return fn(state, runtime)
            except GraphBubbleUp:
                raise
            except Exception as exc:  # noqa: BLE001 - reported to the user, run stops cleanly
                return error_update(node, state, f"{node} failed: {type(exc).__name__}: {exc}")

        return inner

    return wrap


def call_model(runtime: Runtime[AgentContext], node: str, method: str, *args: Any, **kw: Any) -> tuple[Any, float]:
    """One model call with progress events on the custom stream; returns (result, seconds)."""
    writer = runtime.stream_writer

    def progress(done: int, total: int) -> None:
        writer({"type": "progress", "node": node, "call": method, "phase": "dllm", "step": done, "total": total})

    backend = runtime.context.get_backend()
    t0 = time.perf_counter()
    out = getattr(backend, method)(*args, progress=progress, **kw)
    return out, time.perf_counter() - t0


def store_image(runtime: Runtime[AgentContext], node: str, result: Any, origin: str) -> ImageRef:
    """Write an ImageResult's pixels and codes to the run directory; stream the reference."""
    ref = runtime.context.store().put(image=result.image, codes=result.codes, h=result.h, w=result.w, origin=origin)
    runtime.stream_writer({"type": "image", "node": node, "image": ref})
    return ref


def image_input(runtime: Runtime[AgentContext], ref: ImageRef, retokenize: str) -> tuple[Any, str]:
    """What to hand the backend for a stored image, and which path ran.

    ``reuse`` passes the generated codes as they are (no decode/encode) when the image has codes
    and the backend takes them; otherwise pixels go in and the backend re-encodes them
    (``roundtrip``), decoding codes to pixels first when no PNG was stored."""
    ctx = runtime.context
    backend = ctx.get_backend()
    store = ctx.store()
    if retokenize == "reuse" and ref.get("codes") and backend.accepts_codes:
        return store.load_codes(ref), "reuse"
    if ref.get("png"):
        return store.load_image(ref), "roundtrip"
    codes = store.load_codes(ref)
    steps = ctx.image_options.get("decoder_steps")
    return backend.decode_image(codes.codes, codes.h, codes.w, **({"steps": steps} if steps else {})), "roundtrip"


def seed_for(runtime: Runtime[AgentContext], offset: int) -> Optional[int]:
    """The run's seed plus ``offset``, modulo 2**63 (None when the run has no seed)."""
    s = runtime.context.seed
    return None if s is None else (s + offset) % (MAX_SEED + 1)  # wraps, so a seed near the top stays valid


def interleaved_segments(runtime: Runtime, node: str, state: Any, result: Any, seconds: float, *, stream: bool):
    """An interleaved result -> (stored image refs, timeline events, cleaned texts); the last event
    carries the call's seconds. ``stream`` also sends each text through the stream writer."""
    refs, ev, texts = [], [], []
    for seg in result.segments:
        if isinstance(seg, str):
            t = prompts.clean(seg)
            if t:
                texts.append(t)
                ev.append(event(node, "text", state, text=t, data={"role": "story"}))
                if stream:
                    runtime.stream_writer({"type": "text", "node": node, "text": t})
        else:
            ref = store_image(runtime, node, seg, "interleaved")
            refs.append(ref)
            ev.append(event(node, "image", state, image=ref))
    if ev:
        ev[-1]["seconds"] = seconds
    return refs, ev, texts


# ----------------------------------------------------------------------------------- routing
def _takes_runtime(fn: Callable) -> bool:
    return len(inspect.signature(fn).parameters) >= 2


def routed(fn: Callable, then: Next, *, finish: str) -> Callable:
    """``fn(state[, runtime]) -> update`` as a node that returns ``Command(update, goto=...)``:
    ``finish`` when the update failed or stopped the run, else ``then`` (a node name, or a
    function of the state as it is after the update: a shallow merge, enough for the plain
    keys routes read)."""
    with_runtime = _takes_runtime(fn)

    def node(state: Any, runtime: Runtime[AgentContext]) -> Command:
        update = fn(state, runtime) if with_runtime else fn(state)
        after = {**state, **update}
        if not is_ok(after):
            return Command(update=update, goto=finish)
        return Command(update=update, goto=then if isinstance(then, str) else then(after))

    node.__name__ = getattr(fn, "__name__", "node")
    return node


def add_step(b: StateGraph, name: str, fn: Callable, then: Next, *, finish: str, dests: tuple[str, ...] = ()) -> None:
    """Add node ``name`` going to ``then`` (``dests``: every node a function ``then`` may pick),
    or to ``finish`` once it failed or stopped the run. Only ``finish`` after it: a plain edge."""
    if then == finish:
        b.add_node(name, fn)
        b.add_edge(name, finish)
        return
    ways = (then,) if isinstance(then, str) else tuple(dests)
    b.add_node(name, routed(fn, then, finish=finish), destinations=tuple(dict.fromkeys(ways + (finish,))))


# ------------------------------------------------------------------------------- start, finish
def make_start(node: str, begin: Callable[[Any, Any], dict], *, failed: Mapping[str, Any], prefix: str) -> Callable:
    """The first node: ``begin(state, runtime)`` sets the run up; a ValueError or OSError it
    raises becomes ``prefix + message`` in the shared error shape, with ``failed`` added."""

    def start(state: Any, runtime: Runtime[AgentContext]) -> dict:
        try:
            return begin(state, runtime)
        except (ValueError, OSError) as exc:
            return {**failed, **error_update(node, state, f"{prefix}{exc}")}

    return start


def finished_status(state: Mapping[str, Any], *, capped: bool = False) -> str:
    """A run still ``running`` at the end is done (or capped); failed/stopped/capped stay."""
    status = state.get("status", "running")
    if status == "running":
        return "capped" if capped else "done"
    return status


def publish_run(runtime: Runtime[AgentContext], state: Mapping[str, Any], update: Mapping[str, Any]) -> None:
    """Write trace.json and report.html of the final state (``state`` with the finishing
    ``update``; its timeline events appended) and stream the ``finished`` event."""
    final = {**state, **update}
    if "timeline" in update:
        final["timeline"] = list(state.get("timeline", [])) + list(update["timeline"])
    write_run_files(runtime.context.run_dir, final)
    runtime.stream_writer({"type": "finished", "status": update["status"], "run_dir": str(runtime.context.run_dir)})


def run_request(state: Mapping[str, Any]) -> Optional[str]:
    """What the run was asked: a workflow's ``prompt`` input, else the graph's ``prompt``."""
    inputs = state.get("inputs")
    request = inputs.get("prompt") if isinstance(inputs, Mapping) else state.get("prompt")
    return request if isinstance(request, str) and request.strip() else None


def pixel_check_event(runtime: Runtime[AgentContext], state: Mapping[str, Any],
                      update: Mapping[str, Any]) -> Optional[TimelineEvent]:
    """The backend's own pixel checker (``pixel_check(request, image)``, on the embedded shapes
    model) on every image event of the run, as one ``pixel_check`` timeline event whose data maps
    each image's sha256 to ``{"passed", "problems"}`` (or ``{"error"}``); None when the backend has
    no checker or it judges no image. No model call: the checker reads the stored pixels."""
    check = getattr(runtime.context.get_backend(), "pixel_check", None)
    request = run_request(state)
    if not callable(check) or request is None:
        return None
    store = runtime.context.store()
    checks: dict[str, dict] = {}
    for ev in list(state.get("timeline", [])) + list(update.get("timeline", [])):
        ref = ev.get("image") if ev.get("kind") == "image" else None
        if not ref or not ref.get("png") or ref["sha256"] in checks:
            continue
        try:
            verdict = check(request, store.load_image(ref))
        except Exception as exc:  # noqa: BLE001 - the checker never fails the run; the report says why
            verdict = {"error": f"{type(exc).__name__}: {exc}"}
        if verdict is not None:
            checks[ref["sha256"]] = dict(verdict)
    if not checks:
        return None
    good = sum(1 for v in checks.values() if v.get("passed") is True)
    return event("pixel_checker", "pixel_check", state, text=f"pixel checker: {good} of {len(checks)} images show the request",
                 data={"request": request, "checks": checks})


def make_finish(summarize: Callable[[Any], dict], *, write_files: bool = True) -> Callable:
    """The last node: ``summarize(state)`` gives the final update (with ``status``), then the run
    files and the ``finished`` event (unless ``write_files`` is off, as for a sub-workflow). A
    run whose backend has a pixel checker gets its verdict on every image (``pixel_check_event``)."""

    def finish(state: Any, runtime: Runtime[AgentContext]) -> dict:
        update = summarize(state)
        if write_files:
            checked = pixel_check_event(runtime, state, update)
            if checked is not None:
                update = {**update, "timeline": list(update.get("timeline", [])) + [checked]}
            publish_run(runtime, state, update)
        return update

    return finish
