"""The four agent graphs. Small nodes return partial state updates; assembly is at the bottom
(``build_graph``). The node runtime (model calls, images, events, guards, routing, start and
finish) is ``nodes.py``, shared with the compiled YAML workflows.

Every node that calls the model makes one logical model call (inspection fans out one ``Send``
task per claim), so with a durable checkpointer a resumed run repeats no completed call. A failed
call becomes ``state["error"]`` (a readable message) and the run goes straight to ``finish``
(a ``Command(goto="finish")``, see ``nodes.py``), which writes ``trace.json`` and
``report.html`` in the run directory.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send, interrupt

from . import prompts
from .context import AgentContext
from .nodes import (add_step, call_model, error_update, event, finished_status, guarded, image_input,
                    interleaved_segments, make_finish, make_start, seed_for, store_image)
from .reasoning import split_steps
from .state import AgentState, InspectTask, Verdict

__all__ = ["build_graph", "GRAPHS"]

GRAPHS = ("plan_then_draw", "draw_inspect_refine", "visual_reasoning", "interleaved_story")
DEFAULT_MAX_ITERATIONS = {"plan_then_draw": 1, "draw_inspect_refine": 3, "visual_reasoning": 3, "interleaved_story": 4}
FINISH = "finish"


# ------------------------------------------------------------------------------ shared nodes
def graph_start(kind: str, retokenize: str, max_iterations: int) -> Callable:
    def begin(state: AgentState, runtime: Any) -> dict:
        prompt = state.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        cap = state.get("max_iterations", max_iterations)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"max_iterations={cap!r} must be an integer >= 1")
        return {"graph": kind, "status": "running", "error": None, "iteration": state.get("iteration", 0),
                "max_iterations": cap, "retokenize": retokenize, "current_prompt": state.get("current_prompt") or prompt,
                "inputs": state.get("inputs", []), "best_score": state.get("best_score", -1.0),
                "timeline": [event("start", "text", state, text=prompt, data={"role": "user"})]}

    return make_start("start", begin, failed={"graph": kind}, prefix="start failed: ")


def human_review_node(state: AgentState) -> dict:
    """Pause for a person: resume with "approve", "stop" or {"action": "edit", "prompt": "..."}.
    Holds nothing but the interrupt, because a resumed node re-runs from its start."""
    answer = interrupt({"question": "approve, edit the prompt, or stop?", "prompt": state.get("current_prompt", ""),
                        "plan": state.get("plan", ""), "claims": state.get("claims", [])})
    action = answer.get("action") if isinstance(answer, dict) else answer
    if action == "approve":
        return {"timeline": [event("human_review", "review", state, text="approved")]}
    if action == "stop":
        return {"status": "stopped", "timeline": [event("human_review", "review", state, text="stopped by reviewer")]}
    if action == "edit" and isinstance(answer, dict) and isinstance(answer.get("prompt"), str) and answer["prompt"].strip():
        return {"current_prompt": answer["prompt"].strip(),
                "timeline": [event("human_review", "review", state, text=f"prompt edited: {answer['prompt'].strip()}")]}
    msg = f"human_review: cannot use the reply {answer!r}; expected 'approve', 'stop' or {{'action': 'edit', 'prompt': ...}}"
    return error_update("human_review", state, msg)


def summarize(state: AgentState) -> dict:
    """The final update: the status, and the last image as the best when nothing chose one."""
    update: dict = {"status": finished_status(state)}
    if not state.get("answer") and state.get("best") is None and state.get("current") is not None:
        update["best"] = state["current"]
    return update


finish = make_finish(summarize)


# --------------------------------------------------------------------------- plan_then_draw
@guarded("plan")
def plan(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    r, s = call_model(runtime, "plan", "chat", prompts.PLAN.format(prompt=state["prompt"]), seed=seed_for(runtime, 0),
                 **runtime.context.text_options)
    text = prompts.clean(r.text)
    usable = prompts.parse_claims(text, 1)
    current = prompts.DRAW_FROM_PLAN.format(prompt=state["prompt"], plan=text) if usable else state["prompt"]
    ev = [event("plan", "text", state, text=text or "(empty plan)", seconds=s, data={"role": "plan"})]
    if not usable:
        ev.append(event("plan", "note", state, text="the plan had no usable text; drawing from the request alone"))
    return {"plan": text, "current_prompt": current, "timeline": ev}


def make_draw(mode: Literal["normal", "thinking"]) -> Callable:
    @guarded("draw")
    def draw(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        it = state.get("iteration", 0)
        r, s = call_model(runtime, "draw", "generate_image", state["current_prompt"], mode=mode, seed=seed_for(runtime, it),
                     **runtime.context.image_options)
        ref = store_image(runtime, "draw", r, "generate")
        ev = []
        update: dict = {}
        if r.thinking:
            update["plan"] = prompts.clean(r.thinking)
            ev.append(event("draw", "text", state, text=update["plan"], data={"role": "thinking"}))
        ev.append(event("draw", "image", state, image=ref, seconds=s, text=state["current_prompt"]))
        return {**update, "images": [ref], "current": ref, "iteration": it + 1, "timeline": ev}

    return draw


# ---------------------------------------------------------------------- draw_inspect_refine
def make_claims(max_claims: int) -> Callable:
    @guarded("claims")
    def claims(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        given = state.get("claims")
        if given:
            return {"claims": list(given)[:max_claims],
                    "timeline": [event("claims", "claims", state, data={"claims": list(given)[:max_claims], "source": "user"})]}
        r, s = call_model(runtime, "claims", "chat", prompts.CLAIMS.format(prompt=state["prompt"]), seed=seed_for(runtime, 0),
                     **runtime.context.text_options)
        found = prompts.parse_claims(r.text, 1000)
        # only claims the request states survive: a model that writes "a blue circle" for "a blue square"
        # would make the loop punish a right image (the claims a user gives are kept as given)
        faithful = prompts.faithful_claims(found, state["prompt"])
        dropped = [c for c in found if c not in faithful][:20]
        kept = faithful[:max_claims]
        source = "model" if set(faithful) & set(found) else "request"
        ev = [event("claims", "claims", state, seconds=s, text=prompts.clean(r.text),
                     data={"claims": kept, "source": source, "dropped": dropped})]
        if source == "request":
            why = "no checkable claims in the reply" if not found else "no claim in the reply sticks to the request"
            ev.append(event("claims", "note", state, text=f"{why}; checking the whole request"))
        elif dropped:
            ev.append(event("claims", "note", state, text="dropped claims the request does not make: " + "; ".join(dropped)))
        return {"claims": kept, "timeline": ev}

    return claims


def fan_out(state: AgentState) -> Any:
    """After draw/refine: one inspection task per claim for the image just drawn (or finish when none was)."""
    if state.get("current") is None:
        return FINISH
    return [Send("inspect_claim", InspectTask(claim=c, claim_index=i, image=state["current"],
                                              iteration=state["iteration"], retokenize=state["retokenize"]))
            for i, c in enumerate(state["claims"])]


def inspect_claim(task: InspectTask, runtime: Runtime[AgentContext]) -> dict:
    """Ask the model whether one claim holds for the image (a parallel Send task)."""
    err: Optional[str] = None
    answer, passed, path, s = "", None, task["retokenize"], 0.0
    try:
        image, path = image_input(runtime, task["image"], task["retokenize"])
        r, s = call_model(runtime, "inspect", "understand", image, prompts.INSPECT.format(claim=task["claim"]),
                     seed=seed_for(runtime, 0), **runtime.context.text_options)
        answer = prompts.clean(r.text)
        passed = prompts.parse_verdict(r.text)
    except GraphBubbleUp:
        raise
    except Exception as exc:  # noqa: BLE001 - becomes part of the verdict, judge stops the run
        err = f"inspect failed on claim {task['claim_index'] + 1}: {type(exc).__name__}: {exc}"
    v = Verdict(iteration=task["iteration"], claim_index=task["claim_index"], claim=task["claim"], passed=passed,
                answer=answer, image=task["image"]["sha256"], retokenize=path, error=err)
    runtime.stream_writer({"type": "verdict", "node": "inspect_claim", "verdict": v})
    ev = event("inspect_claim", "error" if err else "verdict", {"iteration": task["iteration"]}, seconds=s,
                text=err or answer, data={"verdict": v})
    return {"verdicts": [v], "timeline": [ev]}


def judge(state: AgentState) -> dict:
    it = state["iteration"]
    mine = sorted((v for v in state.get("verdicts", []) if v["iteration"] == it), key=lambda v: v["claim_index"])
    errors = [v["error"] for v in mine if v["error"]]
    if errors:
        return {"error": errors[0], "status": "failed"}
    passed, score = prompts.verdict_tally([v["passed"] for v in mine])
    update: dict = {"timeline": [event("judge", "note", state, text=f"{passed}/{len(mine)} claims pass",
                                        data={"score": score})]}
    # strictly better only: the best is never below the first image's score, and a tie keeps the earlier image
    # (tests/test_inspect_by_looking.py fails if this becomes >= or the best is simply the last image)
    if score > state.get("best_score", -1.0):
        update.update(best=state["current"], best_score=score)
    if score == 1.0:
        update["status"] = "done"
    elif it >= state["max_iterations"]:
        update["status"] = "capped"
    return update


def after_judge(state: AgentState) -> Literal["refine", "finish"]:
    return "refine" if state.get("status") == "running" else FINISH


def make_refine(strategy: Literal["auto", "edit", "redraw"]) -> Callable:
    @guarded("refine")
    def refine(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        it = state["iteration"]
        mine = [v for v in state["verdicts"] if v["iteration"] == it]
        failed = "; ".join(v["claim"] for v in sorted(mine, key=lambda v: v["claim_index"]) if not v["passed"])
        _, score = prompts.verdict_tally([v["passed"] for v in mine])
        how = strategy if strategy != "auto" else ("edit" if score >= 0.5 else "redraw")
        if how == "edit":
            image, _ = image_input(runtime, state["current"], state["retokenize"])
            text = prompts.EDIT.format(failed=failed)
            r, s = call_model(runtime, "refine", "edit_image", image, text, seed=seed_for(runtime, it),
                         **runtime.context.edit_options)
            ref = store_image(runtime, "refine", r, "edit")
            update: dict = {}
        else:
            text = prompts.REDRAW.format(prompt=state["prompt"], failed=failed)
            r, s = call_model(runtime, "refine", "generate_image", text, seed=seed_for(runtime, it),
                         **runtime.context.image_options)
            ref = store_image(runtime, "refine", r, "generate")
            update = {"current_prompt": text}
        ev = event("refine", "image", state, image=ref, seconds=s, text=text, data={"how": how})
        return {**update, "images": [ref], "current": ref, "iteration": it + 1, "timeline": [ev]}

    return refine


# ------------------------------------------------------------------------ visual_reasoning
def make_think(sketch: Literal["auto", "always", "never", "steps"]) -> Callable:
    if sketch == "steps":
        return think_steps

    @guarded("think")
    def think(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        ctx = runtime.context
        notes = list(state.get("notes", []))
        images = [image_input(runtime, ref, state["retokenize"])[0] for ref in state.get("inputs", [])]
        text = prompts.REASON.format(question=state["current_prompt"], notes=prompts.notes_block(notes))
        r, s = call_model(runtime, "think", "chat", text, images=images, seed=seed_for(runtime, state["iteration"]),
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
                        "timeline": [event("think", "text", state, text=thought or "(empty)", seconds=s,
                                            data={"role": "thought", "action": action})]}
        if action == "answer":
            update["answer"] = body
        elif action == "none":
            update["answer"] = thought
        elif action == "sketch":
            update["current_sketch"] = body
        return update

    return think


def after_think(state: AgentState) -> Literal["sketch", "final_answer", "observe", "finish"]:
    return {"sketch": "sketch", "final": "final_answer", "observe": "observe"}.get(state.get("action", ""), FINISH)


# sketch="steps": the question's steps, sketched one edit each on the previous sketch, then re-read
NO_START_IMAGE = ("visual_reasoning with sketch='steps' needs a starting image: each step of the question is an edit "
                  "of the picture it is about; pass that picture (images=[...]), or use sketch='auto' to answer "
                  "from text alone")


@guarded("think")
def think_steps(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Split the question into its steps and its final question (``split_steps``; no model call)."""
    steps, question = split_steps(state["current_prompt"])
    if not state.get("inputs"):
        return error_update("think", state, NO_START_IMAGE)
    if len(steps) > state["max_iterations"]:
        return error_update("think", state, f"visual_reasoning with sketch='steps': the question has {len(steps)} "
                                            f"steps but max_iterations={state['max_iterations']} caps the sketches; "
                                            f"raise max_iterations to at least {len(steps)}")
    lines = [f"Step {i}: {s}" for i, s in enumerate(steps, 1)] + [f"Question: {question}"]
    action = "sketch" if steps else "observe"
    return {"plan": "\n".join(steps), "action": action, "current_sketch": steps[0] if steps else "",
            "notes": list(state.get("notes", [])) + lines,
            "timeline": [event("think", "text", state, text="\n".join(lines),
                               data={"role": "thought", "action": action, "steps": steps, "question": question})]}


def after_step(state: AgentState) -> Literal["sketch", "observe"]:
    """Another step to sketch, or re-read the last sketch."""
    return "sketch" if state["iteration"] < len(state.get("plan", "").splitlines()) else "observe"


@guarded("sketch")
def sketch_step(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Apply the next step as an edit of the previous sketch (of the first input image at first)."""
    it = state["iteration"]
    steps = state["plan"].splitlines()
    image, _ = image_input(runtime, state["current"] if it else state["inputs"][0], state["retokenize"])
    r, s = call_model(runtime, "sketch", "edit_image", image, steps[it], seed=seed_for(runtime, it),
                      **runtime.context.edit_options)
    ref = store_image(runtime, "sketch", r, "sketch")
    return {"images": [ref], "current": ref, "iteration": it + 1,
            "current_sketch": steps[it + 1] if it + 1 < len(steps) else "",
            "timeline": [event("sketch", "image", state, image=ref, text=steps[it], seconds=s,
                               data={"step": it + 1, "steps": len(steps)})]}


@guarded("observe")
def observe_steps(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Ask the final question of the last sketch (of the input image when there were no steps); its reply is the answer."""
    _, question = split_steps(state["current_prompt"])
    ref = state["current"] if state["iteration"] else state["inputs"][0]
    image, path = image_input(runtime, ref, state["retokenize"])
    r, s = call_model(runtime, "observe", "understand", image, question, seed=seed_for(runtime, 0),
                      **runtime.context.text_options)
    answer = prompts.clean(r.text)
    return {"answer": answer, "best": ref, "notes": list(state.get("notes", [])) + [f"Observation: {answer}"],
            "timeline": [event("observe", "text", state, image=ref, text=answer or "(empty)", seconds=s,
                               data={"role": "observation", "question": question, "retokenize": path})]}


@guarded("sketch")
def sketch_node(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    ctx = runtime.context
    it = state["iteration"]
    what = state.get("current_sketch") or state["current_prompt"]
    inputs = state.get("inputs", [])
    if inputs:  # draw on the first input image, as Visual Sketchpad draws on the figure
        image, _ = image_input(runtime, inputs[0], state["retokenize"])
        r, s = call_model(runtime, "sketch", "edit_image", image, what, seed=seed_for(runtime, it), **ctx.edit_options)
    else:
        r, s = call_model(runtime, "sketch", "generate_image", what, seed=seed_for(runtime, it), **ctx.image_options)
    ref = store_image(runtime, "sketch", r, "sketch")
    return {"images": [ref], "current": ref, "iteration": it + 1,
            "timeline": [event("sketch", "image", state, image=ref, text=what, seconds=s)]}


@guarded("observe")
def observe(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    image, path = image_input(runtime, state["current"], state["retokenize"])
    r, s = call_model(runtime, "observe", "understand", image, prompts.OBSERVE.format(question=state["current_prompt"]),
                 seed=seed_for(runtime, 0), **runtime.context.text_options)
    text = prompts.clean(r.text)
    return {"notes": list(state.get("notes", [])) + [f"Observation: {text}"],
            "timeline": [event("observe", "text", state, text=text or "(empty)", seconds=s,
                                data={"role": "observation", "retokenize": path})]}


@guarded("final_answer")
def final_answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    images = [image_input(runtime, ref, state["retokenize"])[0] for ref in state.get("inputs", [])]
    text = prompts.FINAL.format(question=state["current_prompt"], notes=prompts.notes_block(state.get("notes", [])))
    r, s = call_model(runtime, "final_answer", "chat", text, images=images, seed=seed_for(runtime, 0), **runtime.context.text_options)
    action, body = prompts.parse_action(r.text)
    answer = body if action == "answer" else prompts.clean(r.text)
    return {"answer": answer, "status": "capped",
            "timeline": [event("final_answer", "text", state, text=answer or "(empty)", seconds=s, data={"role": "answer"})]}


# ----------------------------------------------------------------------- interleaved_story
@guarded("interleave")
def interleave(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    ctx = runtime.context
    images = [image_input(runtime, ref, state["retokenize"])[0] for ref in state.get("inputs", [])]
    r, s = call_model(runtime, "interleave", "generate_interleaved", state["current_prompt"], images=images,
                 max_frames=state["max_iterations"], seed=seed_for(runtime, 0), **ctx.interleaved_options)
    refs, ev, texts = interleaved_segments(runtime, "interleave", state, r, s, stream=True)
    return {"images": refs, "current": refs[-1] if refs else None, "iteration": len(refs),
            "answer": "\n\n".join(texts), "timeline": ev}


# ---------------------------------------------------------------------------------- assembly
def _chain(b: StateGraph, steps: list[tuple[str, Callable]], then: str) -> None:
    """START -> steps in turn -> ``then``; a step that fails or stops the run goes to finish instead."""
    b.add_edge(START, steps[0][0])
    for (name, fn), nxt in zip(steps, [s[0] for s in steps[1:]] + [then]):
        add_step(b, name, fn, nxt, finish=FINISH)


def _check_options(kind: str, retokenize: str, max_iterations: Optional[int], planner: str, refine: str,
                   max_claims: int, sketch: str) -> int:
    """ValueError for a bad option; the default loop cap."""
    if kind not in GRAPHS:
        raise ValueError(f"unknown graph {kind!r}; choose from {', '.join(GRAPHS)}")
    if retokenize not in ("reuse", "roundtrip"):
        raise ValueError(f"retokenize={retokenize!r}: 'reuse' or 'roundtrip'")
    if planner not in ("chat", "thinking"):
        raise ValueError(f"planner={planner!r}: 'chat' or 'thinking'")
    if refine not in ("auto", "edit", "redraw"):
        raise ValueError(f"refine={refine!r}: 'auto', 'edit' or 'redraw'")
    if sketch not in ("auto", "always", "never", "steps"):
        raise ValueError(f"sketch={sketch!r}: 'auto', 'always', 'never' or 'steps'")
    if isinstance(max_claims, bool) or not isinstance(max_claims, int) or max_claims < 1:
        raise ValueError(f"max_claims={max_claims!r}: an integer >= 1")
    cap = DEFAULT_MAX_ITERATIONS[kind] if max_iterations is None else max_iterations
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"max_iterations={max_iterations!r}: an integer >= 1")
    return cap


def build_graph(
    kind: str,
    *,
    checkpointer: Any = None,
    human_review: bool = False,
    retokenize: Literal["reuse", "roundtrip"] = "roundtrip",
    max_iterations: Optional[int] = None,
    planner: Literal["chat", "thinking"] = "chat",
    refine: Literal["auto", "edit", "redraw"] = "auto",
    max_claims: int = 4,
    sketch: Literal["auto", "always", "never", "steps"] = "auto",
):
    """Compile one of ``GRAPHS``.

    human_review: pause for approval before the first model image call (needs a checkpointer);
    retokenize: how inspection/observation sees a generated image: ``roundtrip`` (the default)
    re-encodes the decoded pixels with the image tokenizer, so the model looks at what the decoder
    drew and a decoder failure fails the check; ``reuse`` hands the model the codes it wrote (no
    decode/encode: cheaper, but blind to the decoder); max_iterations: the default loop cap
    (images drawn / sketches / frames), overridable per run in the input state;
    planner (plan_then_draw): a chat-written plan, or the model's own thinking mode;
    refine (draw_inspect_refine): edit, redraw, or ``auto`` (edit when at least half the claims pass);
    sketch (visual_reasoning): let the model decide, force one sketch, never sketch, or ``steps``:
    split a multi-step question into its steps without a model call (``reasoning.split_steps``),
    apply each as an edit of the previous sketch (starting from the first input image, which
    this mode needs), then ask the final question of the last sketch.
    """
    cap = _check_options(kind, retokenize, max_iterations, planner, refine, max_claims, sketch)
    b = StateGraph(AgentState, context_schema=AgentContext)
    b.add_node(FINISH, finish)
    b.add_edge(FINISH, END)
    lead = [("start", graph_start(kind, retokenize, cap))] + ([("human_review", human_review_node)] if human_review else [])
    if kind == "plan_then_draw":
        planned = [("plan", plan)] if planner == "chat" else []
        _chain(b, lead[:1] + planned + lead[1:] + [("draw", make_draw("thinking" if planner == "thinking" else "normal"))],
               FINISH)
    elif kind == "draw_inspect_refine":
        _chain(b, lead[:1] + [("claims", make_claims(max_claims))] + lead[1:], "draw")
        add_step(b, "draw", make_draw("normal"), fan_out, finish=FINISH, dests=("inspect_claim",))
        b.add_node("inspect_claim", inspect_claim)
        b.add_edge("inspect_claim", "judge")
        add_step(b, "judge", judge, after_judge, finish=FINISH, dests=("refine",))
        add_step(b, "refine", make_refine(refine), fan_out, finish=FINISH, dests=("inspect_claim",))
    elif kind == "visual_reasoning" and sketch == "steps":
        _chain(b, lead, "think")
        add_step(b, "think", make_think(sketch), after_think, finish=FINISH, dests=("sketch", "observe"))
        add_step(b, "sketch", sketch_step, after_step, finish=FINISH, dests=("sketch", "observe"))
        add_step(b, "observe", observe_steps, FINISH, finish=FINISH)
    elif kind == "visual_reasoning":
        _chain(b, lead, "think")
        add_step(b, "think", make_think(sketch), after_think, finish=FINISH, dests=("sketch", "final_answer"))
        add_step(b, "sketch", sketch_node, "observe", finish=FINISH)
        add_step(b, "observe", observe, "think", finish=FINISH)
        add_step(b, "final_answer", final_answer, FINISH, finish=FINISH)
    else:
        _chain(b, lead + [("interleave", interleave)], FINISH)
    return b.compile(checkpointer=checkpointer, name=kind)
