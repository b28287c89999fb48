"""The four agent graphs. Small nodes return partial state updates; assembly is at the bottom
(``build_graph``).

Every node that calls the model makes one logical model call (inspection fans out one ``Send``
task per claim), so with a durable checkpointer a resumed run repeats no completed call. A failed
call becomes ``state["error"]`` (a readable message) and the run goes straight to ``finish``,
which writes ``trace.json`` and ``report.html`` in the run directory.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Literal, Optional

from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send, interrupt

from . import prompts
from .context import AgentContext
from .report import write_run_files
from .state import AgentState, ImageRef, InspectTask, TimelineEvent, Verdict

__all__ = ["build_graph", "GRAPHS"]

GRAPHS = ("plan_then_draw", "draw_inspect_refine", "visual_reasoning", "interleaved_story")
DEFAULT_MAX_ITERATIONS = {"plan_then_draw": 1, "draw_inspect_refine": 3, "visual_reasoning": 3, "interleaved_story": 4}


# ------------------------------------------------------------------------------------ helpers
def _event(node: str, kind: str, state: Any, **kw: Any) -> TimelineEvent:
    ev = TimelineEvent(node=node, kind=kind, iteration=int(state.get("iteration", 0)))
    ev.update(kw)  # type: ignore[typeddict-item]
    return ev


def _guarded(node: str) -> Callable:
    """A node whose exceptions become a readable error in state instead of crashing the run.
    Interrupts (and other control flow LangGraph raises) pass through."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
            try:
                return fn(state, runtime)
            except GraphBubbleUp:
                raise
            except Exception as exc:  # noqa: BLE001 - reported to the user, run stops cleanly
                msg = f"{node} failed: {type(exc).__name__}: {exc}"
                return {"error": msg, "status": "failed", "timeline": [_event(node, "error", state, text=msg)]}

        return inner

    return wrap


def _call(runtime: Runtime[AgentContext], node: str, method: str, *args: Any, **kw: Any) -> tuple[Any, float]:
    """One model call with progress events on the custom stream; returns (result, seconds)."""
    writer = runtime.stream_writer

    def progress(done: int, total: int) -> None:
        writer({"type": "progress", "node": node, "call": method, "phase": "dllm", "step": done, "total": total})

    backend = runtime.context.get_backend()
    t0 = time.perf_counter()
    out = getattr(backend, method)(*args, progress=progress, **kw)
    return out, time.perf_counter() - t0


def _store_image(runtime: Runtime[AgentContext], node: str, result: Any, origin: str) -> ImageRef:
    """Write an ImageResult's pixels and codes to the run directory; stream the reference."""
    ref = runtime.context.store().put(image=result.image, codes=result.codes, h=result.h, w=result.w, origin=origin)
    runtime.stream_writer({"type": "image", "node": node, "image": ref})
    return ref


def _image_input(runtime: Runtime[AgentContext], ref: ImageRef, retokenize: str) -> tuple[Any, str]:
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


def _seed(runtime: Runtime[AgentContext], offset: int) -> Optional[int]:
    s = runtime.context.seed
    return None if s is None else s + offset


# ------------------------------------------------------------------------------ shared nodes
def make_start(kind: str, retokenize: str, max_iterations: int) -> Callable:
    def start(state: AgentState) -> dict:
        prompt = state.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            msg = f"start failed: prompt must be a non-empty string, got {prompt!r}"
            return {"error": msg, "status": "failed", "graph": kind,
                    "timeline": [_event("start", "error", state, text=msg)]}
        cap = state.get("max_iterations", max_iterations)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            msg = f"start failed: max_iterations={cap!r} must be an integer >= 1"
            return {"error": msg, "status": "failed", "graph": kind,
                    "timeline": [_event("start", "error", state, text=msg)]}
        return {"graph": kind, "status": "running", "error": None, "iteration": state.get("iteration", 0),
                "max_iterations": cap, "retokenize": retokenize, "current_prompt": state.get("current_prompt") or prompt,
                "inputs": state.get("inputs", []), "best_score": state.get("best_score", -1.0),
                "timeline": [_event("start", "text", state, text=prompt, data={"role": "user"})]}

    return start


def human_review_node(state: AgentState) -> dict:
    """Pause for a person: resume with "approve", "stop" or {"action": "edit", "prompt": "..."}.
    Holds nothing but the interrupt, because a resumed node re-runs from its start."""
    answer = interrupt({"question": "approve, edit the prompt, or stop?", "prompt": state.get("current_prompt", ""),
                        "plan": state.get("plan", ""), "claims": state.get("claims", [])})
    action = answer.get("action") if isinstance(answer, dict) else answer
    if action == "approve":
        return {"timeline": [_event("human_review", "review", state, text="approved")]}
    if action == "stop":
        return {"status": "stopped", "timeline": [_event("human_review", "review", state, text="stopped by reviewer")]}
    if action == "edit" and isinstance(answer, dict) and isinstance(answer.get("prompt"), str) and answer["prompt"].strip():
        return {"current_prompt": answer["prompt"].strip(),
                "timeline": [_event("human_review", "review", state, text=f"prompt edited: {answer['prompt'].strip()}")]}
    msg = f"human_review: cannot use the reply {answer!r}; expected 'approve', 'stop' or {{'action': 'edit', 'prompt': ...}}"
    return {"error": msg, "status": "failed", "timeline": [_event("human_review", "error", state, text=msg)]}


def finish(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    status = state.get("status", "running")
    if status == "running":
        status = "done"
    update: dict = {"status": status}
    if not state.get("answer") and state.get("best") is None and state.get("current") is not None:
        update["best"] = state["current"]
    write_run_files(runtime.context.run_dir, {**state, **update})
    runtime.stream_writer({"type": "finished", "status": status, "run_dir": str(runtime.context.run_dir)})
    return update


def _ok(state: AgentState) -> bool:
    return not state.get("error") and state.get("status") not in ("stopped", "failed")


# --------------------------------------------------------------------------- plan_then_draw
@_guarded("plan")
def plan(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    r, s = _call(runtime, "plan", "chat", prompts.PLAN.format(prompt=state["prompt"]), seed=_seed(runtime, 0),
                 **runtime.context.text_options)
    text = prompts.clean(r.text)
    usable = prompts.parse_claims(text, 1)
    current = prompts.DRAW_FROM_PLAN.format(prompt=state["prompt"], plan=text) if usable else state["prompt"]
    ev = [_event("plan", "text", state, text=text or "(empty plan)", seconds=s, data={"role": "plan"})]
    if not usable:
        ev.append(_event("plan", "note", state, text="the plan had no usable text; drawing from the request alone"))
    return {"plan": text, "current_prompt": current, "timeline": ev}


def make_draw(mode: Literal["normal", "thinking"]) -> Callable:
    @_guarded("draw")
    def draw(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        it = state.get("iteration", 0)
        r, s = _call(runtime, "draw", "generate_image", state["current_prompt"], mode=mode, seed=_seed(runtime, it),
                     **runtime.context.image_options)
        ref = _store_image(runtime, "draw", r, "generate")
        ev = []
        update: dict = {}
        if r.thinking:
            update["plan"] = prompts.clean(r.thinking)
            ev.append(_event("draw", "text", state, text=update["plan"], data={"role": "thinking"}))
        ev.append(_event("draw", "image", state, image=ref, seconds=s, text=state["current_prompt"]))
        return {**update, "images": [ref], "current": ref, "iteration": it + 1, "timeline": ev}

    return draw


# ---------------------------------------------------------------------- draw_inspect_refine
def make_claims(max_claims: int) -> Callable:
    @_guarded("claims")
    def claims(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        given = state.get("claims")
        if given:
            return {"claims": list(given)[:max_claims],
                    "timeline": [_event("claims", "claims", state, data={"claims": list(given)[:max_claims], "source": "user"})]}
        r, s = _call(runtime, "claims", "chat", prompts.CLAIMS.format(prompt=state["prompt"]), seed=_seed(runtime, 0),
                     **runtime.context.text_options)
        found = prompts.parse_claims(r.text, max_claims)
        ev = [_event("claims", "claims", state, seconds=s, text=prompts.clean(r.text),
                     data={"claims": found or [state["prompt"]], "source": "model" if found else "request"})]
        if not found:
            ev.append(_event("claims", "note", state, text="no checkable claims in the reply; checking the whole request"))
        return {"claims": found or [state["prompt"]], "timeline": ev}

    return claims


def fan_out(state: AgentState) -> Any:
    """One inspection task per claim for the image just drawn (or finish on error)."""
    if not _ok(state) or state.get("current") is None:
        return "finish"
    return [Send("inspect_claim", InspectTask(claim=c, claim_index=i, image=state["current"],
                                              iteration=state["iteration"], retokenize=state["retokenize"]))
            for i, c in enumerate(state["claims"])]


def inspect_claim(task: InspectTask, runtime: Runtime[AgentContext]) -> dict:
    """Ask the model whether one claim holds for the image (a parallel Send task)."""
    err: Optional[str] = None
    answer, passed, path, s = "", None, task["retokenize"], 0.0
    try:
        image, path = _image_input(runtime, task["image"], task["retokenize"])
        r, s = _call(runtime, "inspect", "understand", image, prompts.INSPECT.format(claim=task["claim"]),
                     seed=_seed(runtime, 0), **runtime.context.text_options)
        answer = prompts.clean(r.text)
        passed = prompts.parse_verdict(r.text)
    except GraphBubbleUp:
        raise
    except Exception as exc:  # noqa: BLE001 - becomes part of the verdict, judge stops the run
        err = f"inspect failed on claim {task['claim_index'] + 1}: {type(exc).__name__}: {exc}"
    v = Verdict(iteration=task["iteration"], claim_index=task["claim_index"], claim=task["claim"], passed=passed,
                answer=answer, image=task["image"]["sha256"], retokenize=path, error=err)
    runtime.stream_writer({"type": "verdict", "node": "inspect_claim", "verdict": v})
    ev = _event("inspect_claim", "error" if err else "verdict", {"iteration": task["iteration"]}, seconds=s,
                text=err or answer, data={"verdict": v})
    return {"verdicts": [v], "timeline": [ev]}


def judge(state: AgentState) -> dict:
    it = state["iteration"]
    mine = sorted((v for v in state.get("verdicts", []) if v["iteration"] == it), key=lambda v: v["claim_index"])
    errors = [v["error"] for v in mine if v["error"]]
    if errors:
        return {"error": errors[0], "status": "failed"}
    score = sum(1 for v in mine if v["passed"]) / max(1, len(mine))
    update: dict = {"timeline": [_event("judge", "note", state, text=f"{sum(1 for v in mine if v['passed'])}/{len(mine)} claims pass",
                                        data={"score": score})]}
    if score > state.get("best_score", -1.0):
        update.update(best=state["current"], best_score=score)
    if score == 1.0:
        update["status"] = "done"
    elif it >= state["max_iterations"]:
        update["status"] = "capped"
    return update


def after_judge(state: AgentState) -> Literal["refine", "finish"]:
    return "refine" if state.get("status") == "running" and _ok(state) else "finish"


def make_refine(strategy: Literal["auto", "edit", "redraw"]) -> Callable:
    @_guarded("refine")
    def refine(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        it = state["iteration"]
        mine = [v for v in state["verdicts"] if v["iteration"] == it]
        failed = "; ".join(v["claim"] for v in sorted(mine, key=lambda v: v["claim_index"]) if not v["passed"])
        score = sum(1 for v in mine if v["passed"]) / max(1, len(mine))
        how = strategy if strategy != "auto" else ("edit" if score >= 0.5 else "redraw")
        if how == "edit":
            image, _ = _image_input(runtime, state["current"], state["retokenize"])
            text = prompts.EDIT.format(failed=failed)
            r, s = _call(runtime, "refine", "edit_image", image, text, seed=_seed(runtime, it),
                         **runtime.context.edit_options)
            ref = _store_image(runtime, "refine", r, "edit")
            update: dict = {}
        else:
            text = prompts.REDRAW.format(prompt=state["prompt"], failed=failed)
            r, s = _call(runtime, "refine", "generate_image", text, seed=_seed(runtime, it),
                         **runtime.context.image_options)
            ref = _store_image(runtime, "refine", r, "generate")
            update = {"current_prompt": text}
        ev = _event("refine", "image", state, image=ref, seconds=s, text=text, data={"how": how})
        return {**update, "images": [ref], "current": ref, "iteration": it + 1, "timeline": [ev]}

    return refine


# ------------------------------------------------------------------------ visual_reasoning
def make_think(sketch: Literal["auto", "always", "never"]) -> Callable:
    @_guarded("think")
    def think(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        ctx = runtime.context
        notes = list(state.get("notes", []))
        images = [_image_input(runtime, ref, state["retokenize"])[0] for ref in state.get("inputs", [])]
        text = prompts.REASON.format(question=state["current_prompt"], notes=prompts.notes_block(notes))
        r, s = _call(runtime, "think", "chat", text, images=images, seed=_seed(runtime, state["iteration"]),
                     **ctx.text_options)
        action, body = prompts.parse_action(r.text)
        if sketch == "never" and action == "sketch":
            action, body = "none", prompts.clean(r.text)
        if sketch == "always" and state["iteration"] == 0 and action != "sketch":
            action, body = "sketch", state["current_prompt"]
        if action == "sketch" and state["iteration"] >= state["max_iterations"]:
            action = "final"
        thought = prompts.clean(r.text)
        update: dict = {"notes": notes + [f"Thought: {thought}"] if thought else notes, "action": action,
                        "timeline": [_event("think", "text", state, text=thought or "(empty)", seconds=s,
                                            data={"role": "thought", "action": action})]}
        if action == "answer":
            update["answer"] = body
        elif action == "none":
            update["answer"] = thought
        elif action == "sketch":
            update["current_sketch"] = body
        return update

    return think


def after_think(state: AgentState) -> Literal["sketch", "final_answer", "finish"]:
    if not _ok(state):
        return "finish"
    return {"sketch": "sketch", "final": "final_answer"}.get(state.get("action", ""), "finish")


@_guarded("sketch")
def sketch_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    ctx = runtime.context
    it = state["iteration"]
    what = state.get("current_sketch") or state["current_prompt"]
    inputs = state.get("inputs", [])
    if inputs:  # draw on the first input image, as Visual Sketchpad draws on the figure
        image, _ = _image_input(runtime, inputs[0], state["retokenize"])
        r, s = _call(runtime, "sketch", "edit_image", image, what, seed=_seed(runtime, it), **ctx.edit_options)
    else:
        r, s = _call(runtime, "sketch", "generate_image", what, seed=_seed(runtime, it), **ctx.image_options)
    ref = _store_image(runtime, "sketch", r, "sketch")
    return {"images": [ref], "current": ref, "iteration": it + 1,
            "timeline": [_event("sketch", "image", state, image=ref, text=what, seconds=s)]}


@_guarded("observe")
def observe(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    image, path = _image_input(runtime, state["current"], state["retokenize"])
    r, s = _call(runtime, "observe", "understand", image, prompts.OBSERVE.format(question=state["current_prompt"]),
                 seed=_seed(runtime, 0), **runtime.context.text_options)
    text = prompts.clean(r.text)
    return {"notes": list(state.get("notes", [])) + [f"Observation: {text}"],
            "timeline": [_event("observe", "text", state, text=text or "(empty)", seconds=s,
                                data={"role": "observation", "retokenize": path})]}


@_guarded("final_answer")
def final_answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    images = [_image_input(runtime, ref, state["retokenize"])[0] for ref in state.get("inputs", [])]
    text = prompts.FINAL.format(question=state["current_prompt"], notes=prompts.notes_block(state.get("notes", [])))
    r, s = _call(runtime, "final_answer", "chat", text, images=images, seed=_seed(runtime, 0), **runtime.context.text_options)
    action, body = prompts.parse_action(r.text)
    answer = body if action == "answer" else prompts.clean(r.text)
    return {"answer": answer, "status": "capped",
            "timeline": [_event("final_answer", "text", state, text=answer or "(empty)", seconds=s, data={"role": "answer"})]}


# ----------------------------------------------------------------------- interleaved_story
def interleaved_segments(runtime: Runtime, node: str, state: dict, result: Any, seconds: float, *, stream: bool):
    """An interleaved result -> (stored image refs, timeline events, cleaned texts); the last event
    carries the call's seconds. ``stream`` also sends each text through the stream writer."""
    refs, ev, texts = [], [], []
    for seg in result.segments:
        if isinstance(seg, str):
            t = prompts.clean(seg)
            if t:
                texts.append(t)
                ev.append(_event(node, "text", state, text=t, data={"role": "story"}))
                if stream:
                    runtime.stream_writer({"type": "text", "node": node, "text": t})
        else:
            ref = _store_image(runtime, node, seg, "interleaved")
            refs.append(ref)
            ev.append(_event(node, "image", state, image=ref))
    if ev:
        ev[-1]["seconds"] = seconds
    return refs, ev, texts


@_guarded("interleave")
def interleave(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    ctx = runtime.context
    images = [_image_input(runtime, ref, state["retokenize"])[0] for ref in state.get("inputs", [])]
    r, s = _call(runtime, "interleave", "generate_interleaved", state["current_prompt"], images=images,
                 max_frames=state["max_iterations"], seed=_seed(runtime, 0), **ctx.interleaved_options)
    refs, ev, texts = interleaved_segments(runtime, "interleave", state, r, s, stream=True)
    return {"images": refs, "current": refs[-1] if refs else None, "iteration": len(refs),
            "answer": "\n\n".join(texts), "timeline": ev}


# ---------------------------------------------------------------------------------- assembly
def _gate(next_node: str) -> Callable:
    def route(state: AgentState) -> str:
        return next_node if _ok(state) else "finish"

    route.__name__ = f"to_{next_node}"
    return route


def _chain(b: StateGraph, nodes: list[str]) -> None:
    """START -> nodes[0] -> ... each hop skipping to finish when the run failed or stopped."""
    b.add_edge(START, nodes[0])
    for a, z in zip(nodes, nodes[1:]):
        if z == "finish":
            b.add_edge(a, z)
        else:
            b.add_conditional_edges(a, _gate(z), [z, "finish"])


def build_graph(
    kind: str,
    *,
    checkpointer: Any = None,
    human_review: bool = False,
    retokenize: Literal["reuse", "roundtrip"] = "reuse",
    max_iterations: Optional[int] = None,
    planner: Literal["chat", "thinking"] = "chat",
    refine: Literal["auto", "edit", "redraw"] = "auto",
    max_claims: int = 4,
    sketch: Literal["auto", "always", "never"] = "auto",
):
    """Compile one of ``GRAPHS``.

    human_review: pause for approval before the first model image call (needs a checkpointer);
    retokenize: how inspection/observation sees a generated image (``reuse`` the codes, or
    decode to pixels and re-encode: ``roundtrip``); max_iterations: the default loop cap
    (images drawn / sketches / frames), overridable per run in the input state;
    planner (plan_then_draw): a chat-written plan, or the model's own thinking mode;
    refine (draw_inspect_refine): edit, redraw, or ``auto`` (edit when at least half the claims pass);
    sketch (visual_reasoning): let the model decide, force one sketch, or never sketch.
    """
    if kind not in GRAPHS:
        raise ValueError(f"unknown graph {kind!r}; choose from {', '.join(GRAPHS)}")
    if retokenize not in ("reuse", "roundtrip"):
        raise ValueError(f"retokenize={retokenize!r}: 'reuse' or 'roundtrip'")
    if planner not in ("chat", "thinking"):
        raise ValueError(f"planner={planner!r}: 'chat' or 'thinking'")
    if refine not in ("auto", "edit", "redraw"):
        raise ValueError(f"refine={refine!r}: 'auto', 'edit' or 'redraw'")
    if sketch not in ("auto", "always", "never"):
        raise ValueError(f"sketch={sketch!r}: 'auto', 'always' or 'never'")
    if isinstance(max_claims, bool) or not isinstance(max_claims, int) or max_claims < 1:
        raise ValueError(f"max_claims={max_claims!r}: an integer >= 1")
    cap = DEFAULT_MAX_ITERATIONS[kind] if max_iterations is None else max_iterations
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"max_iterations={max_iterations!r}: an integer >= 1")

    b = StateGraph(AgentState, context_schema=AgentContext)
    b.add_node("start", make_start(kind, retokenize, cap))
    b.add_node("finish", finish)
    b.add_edge("finish", END)
    review = ["human_review"] if human_review else []
    if human_review:
        b.add_node("human_review", human_review_node)

    if kind == "plan_then_draw":
        b.add_node("draw", make_draw("thinking" if planner == "thinking" else "normal"))
        if planner == "chat":
            b.add_node("plan", plan)
        _chain(b, ["start"] + (["plan"] if planner == "chat" else []) + review + ["draw", "finish"])
    elif kind == "draw_inspect_refine":
        b.add_node("claims", make_claims(max_claims))
        b.add_node("draw", make_draw("normal"))
        b.add_node("inspect_claim", inspect_claim)
        b.add_node("judge", judge)
        b.add_node("refine", make_refine(refine))
        _chain(b, ["start", "claims"] + review + ["draw"])
        b.add_conditional_edges("draw", fan_out, ["inspect_claim", "finish"])
        b.add_edge("inspect_claim", "judge")
        b.add_conditional_edges("judge", after_judge, ["refine", "finish"])
        b.add_conditional_edges("refine", fan_out, ["inspect_claim", "finish"])
    elif kind == "visual_reasoning":
        b.add_node("think", make_think(sketch))
        b.add_node("sketch", sketch_node)
        b.add_node("observe", observe)
        b.add_node("final_answer", final_answer)
        _chain(b, ["start"] + review + ["think"])
        b.add_conditional_edges("think", after_think, ["sketch", "final_answer", "finish"])
        b.add_conditional_edges("sketch", _gate("observe"), ["observe", "finish"])
        b.add_conditional_edges("observe", _gate("think"), ["think", "finish"])
        b.add_edge("final_answer", "finish")
    else:
        b.add_node("interleave", interleave)
        _chain(b, ["start"] + review + ["interleave", "finish"])
    return b.compile(checkpointer=checkpointer, name=kind)
