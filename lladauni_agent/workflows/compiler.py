"""One builder: a validated ``Workflow`` becomes a LangGraph ``StateGraph`` on the agent layer's
runtime (``AgentContext`` for the backend and run directory, image files through the artifact
store, the same stream events, ``trace.json`` + ``report.html`` at the end).

Shape of a compiled workflow::

    START -> _inputs -> <your nodes, wired by edges / routes / loops> -> _finish -> END

Each kind of node has a builder (``NODE_BUILDERS``); the node runtime (model calls, images,
events, guards, start and finish) is ``lladauni_agent/nodes.py``, shared with the Python graphs.
A node that fails goes to ``_finish`` instead of onwards (``Command(goto="_finish")``; see
``nodes.py`` for why no node that can fail has a plain edge), so a failure is a readable
``state["error"]`` and the run still writes its trace and report. A ``loop`` node ``L`` becomes
``L`` (set the counter) -> body... -> ``L__check`` (until? cap?) -> body again, or onwards; a
router in the body goes to a later member or to ``L__check``. An ``inspect`` node ``N`` with
``for_each`` becomes ``N`` (one ``Send`` per item) -> ``N__each`` (in parallel) -> ``N__gather``.

Every template and expression runs under the workflow's ``WorkflowLimits``; one that fails raises
``TemplateRunError`` whose message starts with where it is written (``file:line:col: key:``, the
line of the template itself when jinja tells it), so the node's error names the file, the step
and the place.
"""

from __future__ import annotations

import json
import operator
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional

from typing_extensions import TypedDict  # langgraph-api reads schemas only from this one on Python < 3.12

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, Send

from .. import prompts
from ..context import AgentContext
from ..nodes import (add_step, call_model, error_update, event, finished_status, guarded, image_input,
                     interleaved_segments, is_ok, make_finish, make_start, seed_for, store_image)
from ..state import ImageRef, Status, TimelineEvent
from . import schema as S
from .loader import FALSE_WORDS, TRUE_WORDS, Workflow, check_inputs, model_problem
from .templates import TemplateRunError, evaluate, is_template, render, template_line

__all__ = ["WorkflowState", "WorkflowContext", "compile_workflow", "coerce_inputs", "MAX_LOOP_ITERATIONS", "NODE_BUILDERS",
           "Build", "make_node"]

MAX_LOOP_ITERATIONS = 1000
INPUTS, FINISH = "_inputs", "_finish"  # the two nodes every compiled workflow has


def _merge(a: Optional[dict], b: Optional[dict]) -> dict:
    return {**(a or {}), **(b or {})}


class WorkflowState(TypedDict, total=False):
    inputs: dict[str, Any]  # the run's inputs after type coercion (images as ImageRef)
    nodes: Annotated[dict[str, Any], _merge]  # node name -> its latest output
    loops: Annotated[dict[str, Any], _merge]  # loop name -> {iteration, max, capped}
    outputs: dict[str, Any]
    images: Annotated[list[ImageRef], operator.add]
    fanout: Annotated[list[dict[str, Any]], operator.add]  # results of inspect fan-outs, gathered per node and token
    timeline: Annotated[list[TimelineEvent], operator.add]
    iteration: int  # loop passes so far, all loops together (seeds and the report use it)
    max_iterations: int
    current: Optional[ImageRef]
    best: Optional[ImageRef]
    answer: str
    prompt: str
    status: Status
    error: Optional[str]
    graph: str
    retokenize: str


@dataclass
class WorkflowContext(AgentContext):
    """``AgentContext`` plus the caller's option overrides, which beat the workflow's own
    ``backend:`` settings and a node's ``options`` (so a test can force tiny sizes)."""

    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def _scope(state: Any) -> dict[str, Any]:
    return {"inputs": state.get("inputs", {}), "nodes": state.get("nodes", {}), "loops": state.get("loops", {})}


Where = tuple  # the path of a value in the workflow file, e.g. ("nodes", "draw", "prompt")


def _run_template(wf: Workflow, path: Where, text: str, scope: Any, *, expression: bool) -> Any:
    """Render the template (or evaluate the expression) written at ``path`` of ``wf``, under its
    limits; any error becomes a ``TemplateRunError`` that starts with the place."""
    try:
        return evaluate(text, scope, limits=wf.limits) if expression else render(text, scope, limits=wf.limits)
    except Exception as exc:  # noqa: BLE001 - any error of a template is reported with its place
        line = template_line(exc) if not expression or is_template(text) else None
        raise TemplateRunError(f"{wf.where(path, line)}: {type(exc).__name__}: {exc}") from exc


def _text(wf: Workflow, path: Where, template: str, scope: Any) -> str:
    return _run_template(wf, path, template, scope, expression=False)


def _expr(wf: Workflow, path: Where, expr: str, scope: Any) -> Any:
    return _run_template(wf, path, expr, scope, expression=True)


def _value(wf: Workflow, path: Where, v: Any, state: Any) -> Any:
    """A value field: templates render to text, other strings are expressions, the rest literals."""
    if not isinstance(v, str):
        return v
    return _run_template(wf, path, v, _scope(state), expression=not is_template(v))


def _is_ref(x: Any) -> bool:
    return isinstance(x, dict) and "sha256" in x and "png" in x


def _image_fields(name: str, node: Any) -> list[tuple[Where, str]]:
    """The image expressions of a node with where each is written (``image``, or ``images``)."""
    if isinstance(getattr(node, "image", None), str):
        return [(("nodes", name, "image"), node.image)]
    return [(("nodes", name, "images", j), e) for j, e in enumerate(getattr(node, "images", None) or [])]


def _images(wf: Workflow, exprs: list[tuple[Where, str]], state: Any, what: str,
            scope: Optional[dict[str, Any]] = None) -> list[ImageRef]:
    out: list[ImageRef] = []
    for path, e in exprs:
        v = _expr(wf, path, e, scope if scope is not None else _scope(state))
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if not _is_ref(x):
                raise ValueError(f"{what}: {e!r} gave {type(x).__name__} {str(x)[:60]!r}, not an image")
            out.append(x)
    return out


def _options(runtime: Runtime[WorkflowContext], kind: str, node_opts: Any) -> dict[str, Any]:
    ctx = runtime.context
    base = getattr(ctx, f"{kind}_options")
    mine = node_opts.model_dump(exclude_none=True) if node_opts is not None else {}
    return {**base, **mine, **getattr(ctx, "overrides", {}).get(kind, {})}


def _json_object(text: str) -> Optional[Any]:
    """The first JSON object in a reply (models wrap it in prose or code fences)."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            return dec.raw_decode(text[m.start():])[0]
        except ValueError:
            continue
    return None


def _positive_int(v: Any, what: str, limit: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= limit:
        raise ValueError(f"{what} = {v!r}: expected an integer from 1 to {limit}")
    return v


# ------------------------------------------------------------------------------------ inputs
def coerce_inputs(wf: Workflow, raw: dict[str, Any], store: Any) -> dict[str, Any]:
    """Check and convert the run's inputs against the declared types (strings from ``--set``
    are parsed; image paths are copied into the run directory). ValueError names the input."""
    spec = wf.spec
    check_inputs(wf, raw)
    out: dict[str, Any] = {}
    for name, inp in spec.inputs.items():
        if name not in raw:
            out[name] = inp.default
            continue
        v, t = raw[name], inp.type
        try:
            if t == "string":
                if not isinstance(v, str):
                    raise TypeError
            elif t == "integer":
                v = int(v) if isinstance(v, str) else v
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError
            elif t == "number":
                v = float(v) if isinstance(v, str) else v
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError
            elif t == "boolean":
                if isinstance(v, str) and v.lower() in TRUE_WORDS | FALSE_WORDS:
                    v = v.lower() in TRUE_WORDS
                if not isinstance(v, bool):
                    raise TypeError
            elif t == "json":
                v = json.loads(v) if isinstance(v, str) else json.loads(json.dumps(v))
            elif t in ("image", "images"):
                items = v if isinstance(v, (list, tuple)) else (v.split(",") if isinstance(v, str) and t == "images" else [v])
                refs = [x if _is_ref(x) else (store.put(image=x, origin="input") if hasattr(x, "convert") else store.put_file(x))
                        for x in items]
                if t == "image" and len(refs) != 1:
                    raise TypeError
                v = refs[0] if t == "image" else refs
        except (TypeError, ValueError) as exc:
            detail = f": {exc}" if str(exc) else ""
            raise ValueError(f"input {name!r} = {str(v)[:80]!r} is not a valid {t}{detail}") from None
        out[name] = v
    return out


# ------------------------------------------------------------------------------------- nodes
@dataclass
class Build:
    """What a node builder may need besides its own spec: the workflow and its compiled children."""

    wf: Workflow
    children: dict[str, Any] = field(default_factory=dict)

    @property
    def retokenize(self) -> str:
        return self.wf.spec.backend.retokenize


def _done(name: str, output: dict, events: list, **extra: Any) -> dict:
    """A node's update: its output under ``nodes.<name>``, its timeline events, other state keys."""
    return {"nodes": {name: output}, "timeline": events, **extra}


def _inputs_of(runtime: Runtime, refs: list[ImageRef], retokenize: str) -> list[Any]:
    return [image_input(runtime, r, retokenize)[0] for r in refs]


def build_think(bc: Build, name: str, node: S.ThinkNode) -> Callable:
    def run(state, runtime):
        text = _text(bc.wf, ("nodes", name, "prompt"), node.prompt, _scope(state))
        system = _text(bc.wf, ("nodes", name, "system"), node.system, _scope(state)) if node.system else None
        ims = _inputs_of(runtime, _images(bc.wf, _image_fields(name, node), state, name), bc.retokenize)
        r, s = call_model(runtime, name, "chat", text, images=ims, system=system,
                          seed=seed_for(runtime, state.get("iteration", 0)), **_options(runtime, "text", node.options))
        out = prompts.clean(r.text)
        return _done(name, {"text": out}, [event(name, "text", state, text=out or "(empty)", seconds=s, data={"role": "think"})])

    return run


def build_draw(bc: Build, name: str, node: S.DrawNode) -> Callable:
    def run(state, runtime):
        text = _text(bc.wf, ("nodes", name, "prompt"), node.prompt, _scope(state))
        r, s = call_model(runtime, name, "generate_image", text, mode=node.mode,
                          seed=seed_for(runtime, state.get("iteration", 0)), **_options(runtime, "image", node.options))
        ref = store_image(runtime, name, r, "generate")
        thinking = prompts.clean(r.thinking or "") if getattr(r, "thinking", None) else ""
        return _done(name, {"image": ref, "text": thinking}, [event(name, "image", state, image=ref, text=text, seconds=s)],
                     images=[ref], current=ref)

    return run


def build_edit(bc: Build, name: str, node: S.EditNode) -> Callable:
    def run(state, runtime):
        refs = _images(bc.wf, _image_fields(name, node), state, name)
        ims = _inputs_of(runtime, refs, bc.retokenize)
        text = _text(bc.wf, ("nodes", name, "instruction"), node.instruction, _scope(state))
        r, s = call_model(runtime, name, "edit_image", ims[0] if len(ims) == 1 else ims, text,
                          seed=seed_for(runtime, state.get("iteration", 0)), **_options(runtime, "edit", node.options))
        ref = store_image(runtime, name, r, "edit")
        return _done(name, {"image": ref}, [event(name, "image", state, image=ref, text=text, seconds=s,
                                                  data={"references": len(refs)})], images=[ref], current=ref)

    return run


def _read_verdict(node: S.InspectNode, reply: str, text: str) -> tuple[Optional[bool], Optional[dict], list[str]]:
    """(verdict, JSON data, notes) of an inspect reply, as ``node.verdict`` asks."""
    if node.verdict == "yes_no":
        return prompts.parse_verdict(reply), None, []
    if node.verdict != "json":
        return None, None, []
    data = _json_object(text)
    if not isinstance(data, dict):
        return None, None, ["the reply held no JSON object"]
    missing = [k for k in node.keys if k not in data]
    notes = [f"the JSON verdict lacks keys: {', '.join(missing)}"] if missing else []
    return (data.get("pass") if isinstance(data.get("pass"), bool) else None), data, notes


def _inspect_once(bc: Build, name: str, node: S.InspectNode, state: Any, runtime: Runtime,
                  scope: dict[str, Any]) -> tuple[dict[str, Any], list[TimelineEvent]]:
    """One inspection (its output and events); ``scope``: what image and question see."""
    (ref,) = _images(bc.wf, _image_fields(name, node), state, name, scope)[:1] or (None,)
    image, path = image_input(runtime, ref, bc.retokenize)
    q = _text(bc.wf, ("nodes", name, "question"), node.question, scope)
    r, s = call_model(runtime, name, "understand", image, q, seed=seed_for(runtime, 0),
                      **_options(runtime, "text", node.options))
    text = prompts.clean(r.text)
    verdict, data, notes = _read_verdict(node, r.text, text)
    ev = [event(name, "verdict", state, text=text or "(empty)", seconds=s,
                data={"question": q, "verdict": verdict, "json": data, "retokenize": path})]
    ev += [event(name, "note", state, text=n) for n in notes]
    return {"text": text, "verdict": verdict, "data": data}, ev


def build_inspect(bc: Build, name: str, node: S.InspectNode) -> Callable:
    def run(state, runtime):
        return _done(name, *_inspect_once(bc, name, node, state, runtime, _scope(state)))

    return run


def build_decode(bc: Build, name: str, node: S.DecodeNode) -> Callable:
    def run(state, runtime):
        (ref,) = _images(bc.wf, _image_fields(name, node), state, name)
        if not ref.get("codes"):
            raise ValueError(f"image {ref['sha256'][:12]} has no codes to decode (it came as pixels)")
        store = runtime.context.store()
        c = store.load_codes(ref)
        steps = node.steps or _options(runtime, "image", None).get("decoder_steps")
        t0 = time.perf_counter()  # decode_image takes no progress callback
        pil = runtime.context.get_backend().decode_image(c.codes, c.h, c.w, **({"steps": steps} if steps else {}))
        s = time.perf_counter() - t0
        new = store.put(image=pil, codes=c.codes, h=c.h, w=c.w, origin="decode")
        runtime.stream_writer({"type": "image", "node": name, "image": new})
        return _done(name, {"image": new}, [event(name, "image", state, image=new, seconds=s)], images=[new], current=new)

    return run


def build_encode(bc: Build, name: str, node: S.EncodeNode) -> Callable:
    def run(state, runtime):
        (ref,) = _images(bc.wf, _image_fields(name, node), state, name)
        store = runtime.context.store()
        pil = store.load_image(ref)
        c = runtime.context.get_backend().encode_image(pil)
        new = store.put(image=pil, codes=c.codes, h=c.h, w=c.w, origin="encode")
        return _done(name, {"image": new}, [event(name, "note", state, text=f"encoded to a {c.h}x{c.w} code grid")])

    return run


def build_interleave(bc: Build, name: str, node: S.InterleaveNode) -> Callable:
    def run(state, runtime):
        text = _text(bc.wf, ("nodes", name, "prompt"), node.prompt, _scope(state))
        frames = _positive_int(_value(bc.wf, ("nodes", name, "max_frames"), node.max_frames, state), f"{name}.max_frames", 16)
        ims = _inputs_of(runtime, _images(bc.wf, _image_fields(name, node), state, name), bc.retokenize)
        r, s = call_model(runtime, name, "generate_interleaved", text, images=ims, max_frames=frames,
                          seed=seed_for(runtime, state.get("iteration", 0)), **_options(runtime, "interleaved", node.options))
        refs, ev, texts = interleaved_segments(runtime, name, state, r, s, stream=False)
        extra = {"current": refs[-1]} if refs else {}
        return _done(name, {"text": "\n\n".join(texts), "images": refs, "image": refs[-1] if refs else None}, ev,
                     images=refs, **extra)

    return run


def build_router(bc: Build, name: str, node: S.RouterNode) -> Callable:
    def run(state, runtime):
        to = next((r.to for j, r in enumerate(node.routes)
                   if _expr(bc.wf, ("nodes", name, "routes", j, "when"), r.when, _scope(state))), node.default)
        return _done(name, {"route": to}, [event(name, "note", state, text=f"route -> {to}")])

    return run


def build_call(bc: Build, name: str, node: S.CallNode) -> Callable:
    fn = bc.wf.functions[node.function]

    def run(state, runtime):
        args = {k: _value(bc.wf, ("nodes", name, "args", k), v, state) for k, v in node.args.items()}
        value = fn(**args)
        try:
            value = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise TypeError(f"function {node.function!r} returned {type(value).__name__}, which is not JSON data") from None
        text = value if isinstance(value, str) else json.dumps(value)
        return _done(name, {"value": value, "text": text},
                     [event(name, "text", state, text=text[:2000], data={"function": node.function})])

    return run


def build_subworkflow(bc: Build, name: str, node: S.SubworkflowNode) -> Callable:
    child_graph = bc.children[name]

    def run(state, runtime):
        raw = {k: _value(bc.wf, ("nodes", name, "inputs", k), v, state) for k, v in node.inputs.items()}
        child = child_graph.invoke({"inputs": raw}, context=runtime.context)
        if child.get("error"):
            raise RuntimeError(f"sub-workflow {node.workflow!r}: {child['error']}")
        ev = [{**e, "node": f"{name}/{e.get('node', '')}"} for e in child.get("timeline", [])]
        out = {"outputs": child.get("outputs", {}), "text": child.get("answer", ""), "image": child.get("best")}
        extra = {"current": child["best"]} if child.get("best") else {}
        return _done(name, out, ev, images=child.get("images", []), **extra)

    return run


# node kind -> builder(bc, name, node) -> run(state, runtime) -> update; ``loop`` is wired, not built
NODE_BUILDERS: dict[str, Callable[[Build, str, Any], Callable]] = {
    "think": build_think, "draw": build_draw, "edit": build_edit, "inspect": build_inspect, "decode": build_decode,
    "encode": build_encode, "interleave": build_interleave, "router": build_router, "call": build_call,
    "subworkflow": build_subworkflow,
}


def make_node(bc: Build, name: str, node: Any) -> Callable:
    """The guarded node of a workflow node of any kind but ``loop``."""
    run = NODE_BUILDERS[node.kind](bc, name, node)
    run.__name__ = f"{node.kind}_{name}"
    return guarded(name)(run)


def _loop_nodes(bc: Build, name: str, node: S.LoopNode) -> tuple[Callable, Callable]:
    @guarded(name)
    def enter(state, runtime):
        cap = _positive_int(_value(bc.wf, ("nodes", name, "max_iterations"), node.max_iterations, state),
                            f"{name}.max_iterations", MAX_LOOP_ITERATIONS)
        info = {"iteration": 1, "max": cap, "capped": False, "next": "body"}
        # every pass, the first included, draws with a seed of its own: a first pass at the seed of the
        # nodes before the loop would redo their draw (a fix that yields the same codes decodes to the
        # same image, with the same flaw)
        return {"loops": {name: info}, "nodes": {name: {"iteration": 1, "capped": False}}, "max_iterations": cap,
                "iteration": state.get("iteration", 0) + 1,
                "timeline": [event(name, "note", state, text=f"loop starts (at most {cap} passes)")]}

    @guarded(name)
    def check(state, runtime):
        info = dict(state["loops"][name])
        n = info["iteration"]
        done = bool(_expr(bc.wf, ("nodes", name, "until"), node.until, _scope(state))) if node.until else False
        if done:
            info["next"], text = "exit", f"until is true after pass {n}"
        elif n >= info["max"]:
            info.update(next="exit", capped=True)
            text = f"stopped at the cap of {info['max']} passes"
        else:
            info.update(next="body", iteration=n + 1)
            text = ""
        update: dict = {"loops": {name: info}, "nodes": {name: {"iteration": info["iteration"], "capped": info["capped"]}}}
        if info["next"] == "body":
            update["iteration"] = state.get("iteration", 0) + 1
        else:
            update["timeline"] = [event(name, "note", state, text=text)]
        return update

    return enter, check


class FanoutTask(TypedDict, total=False):
    """What one task of an inspect fan-out gets (a ``Send``): the scope, its item and where it goes."""

    inputs: dict[str, Any]
    nodes: dict[str, Any]
    loops: dict[str, Any]
    iteration: int
    item: Any
    index: int
    token: int


def _fanout_nodes(bc: Build, name: str, node: S.InspectNode) -> tuple[Callable, Callable, Callable]:
    """``name`` (evaluate ``for_each``, send one task per item), ``name__each`` (one inspection)
    and ``name__gather`` (the outputs as lists, in the items' order)."""
    each_name, gather_name = f"{name}__each", f"{name}__gather"

    @guarded(name)
    def dispatch(state, runtime):
        items = _expr(bc.wf, ("nodes", name, "for_each"), node.for_each or "[]", _scope(state))
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"for_each gave {type(items).__name__} {str(items)[:60]!r}, not a list")
        out = {"for_each": json.loads(json.dumps(list(items))), "token": len(state.get("fanout", [])),
               "text": [], "verdict": [], "data": []}
        return _done(name, out, [event(name, "note", state, text=f"{len(items)} inspection(s) in parallel")])

    def send(state, runtime):
        update = dispatch(state, runtime)
        if not is_ok({**state, **update}):
            return Command(update=update, goto=FINISH)
        out = update["nodes"][name]
        scope = {**_scope(state), "nodes": {**state.get("nodes", {}), **update["nodes"]}}
        tasks = [Send(each_name, FanoutTask(**scope, iteration=state.get("iteration", 0), item=x, index=i, token=out["token"]))
                 for i, x in enumerate(out["for_each"])]
        return Command(update=update, goto=tasks or gather_name)

    @guarded(name)
    def each(task: FanoutTask, runtime):
        scope = {**_scope(task), "item": task["item"], "index": task["index"]}
        out, ev = _inspect_once(bc, name, node, task, runtime, scope)
        return {"fanout": [{"node": name, "token": task["token"], "index": task["index"], **out}], "timeline": ev}

    def gather(state):
        mine = state["nodes"][name]
        got = sorted((f for f in state.get("fanout", []) if f["node"] == name and f["token"] == mine["token"]),
                     key=lambda f: f["index"])
        return {"nodes": {name: {**mine, **{k: [f[k] for f in got] for k in ("text", "verdict", "data")}}}}

    send.__name__, each.__name__, gather.__name__ = f"inspect_{name}", f"inspect_{name}_each", f"gather_{name}"
    return send, each, gather


def _wire_fanout(b: StateGraph, bc: Build, name: str, node: S.InspectNode, succ: str) -> None:
    send, each, gather = _fanout_nodes(bc, name, node)
    b.add_node(name, send, destinations=(f"{name}__each", f"{name}__gather", FINISH))
    b.add_node(f"{name}__each", each, input_schema=FanoutTask)
    b.add_edge(f"{name}__each", f"{name}__gather")
    add_step(b, f"{name}__gather", gather, succ, finish=FINISH)


def _finish_node(wf: Workflow, write_files: bool) -> Callable:
    def summarize(state: WorkflowState) -> dict:
        outputs: dict[str, Any] = {}
        notes = []
        for k, v in wf.spec.outputs.items():
            try:
                outputs[k] = json.loads(json.dumps(_value(wf, ("outputs", k), v, state)))
            except Exception as exc:  # noqa: BLE001 - an output of a branch that did not run
                outputs[k] = None
                notes.append(event(FINISH, "note", state, text=f"output {k!r} is empty: {type(exc).__name__}: {exc}"))
        status = finished_status(state, capped=any(x.get("capped") for x in state.get("loops", {}).values()))
        texts = [v for v in outputs.values() if isinstance(v, str) and v]
        refs = [v for v in outputs.values() if _is_ref(v)]
        return {"status": status, "outputs": outputs, "answer": texts[0] if texts else state.get("answer", ""),
                "best": refs[0] if refs else state.get("current"), "timeline": notes}

    return make_finish(summarize, write_files=write_files)


def _inputs_node(wf: Workflow) -> Callable:
    spec = wf.spec

    def base() -> dict:
        return {"graph": spec.name, "nodes": {}, "loops": {}, "iteration": 0, "max_iterations": 1,
                "retokenize": spec.backend.retokenize}

    def begin(state: WorkflowState, runtime: Runtime[AgentContext]) -> dict:
        problem = model_problem(wf, _backend_if_any(runtime.context))
        if problem:  # before any model call: a ``requires: full`` workflow on the embedded shapes model
            return {**base(), "prompt": spec.name, **error_update(INPUTS, state, problem)}
        values = coerce_inputs(wf, dict(state.get("inputs") or {}), runtime.context.store())
        shown = values.get("prompt") if isinstance(values.get("prompt"), str) else \
            json.dumps({k: v for k, v in values.items() if not _is_ref(v) and not isinstance(v, list)}, default=str)
        return {**base(), "inputs": values, "status": "running", "error": None, "prompt": f"{spec.name}: {shown}",
                "timeline": [event(INPUTS, "text", state, text=json.dumps(values, default=str)[:2000], data={"role": "inputs"})]}

    return make_start(INPUTS, begin, failed={**base(), "prompt": ""}, prefix="inputs: ")


def _backend_if_any(ctx: AgentContext) -> Any:
    """The run's backend without loading a model; None when there is none (the first model call says why)."""
    try:
        return ctx.get_backend()
    except ValueError:
        return None


# ---------------------------------------------------------------------------------- assembly
def _target(name: str) -> str:
    return FINISH if name == "END" else name


def _wire_loop(b: StateGraph, bc: Build, name: str, node: S.LoopNode, succ: str) -> None:
    """``name`` (set the counter) -> body... -> ``name__check`` -> the body again, or ``succ``."""
    enter, check = _loop_nodes(bc, name, node)
    first = node.body[0]
    add_step(b, name, enter, first, finish=FINISH)
    for i, member in enumerate(node.body):
        # a router in the body routes to later members, or to the loop itself: the end of the pass
        _wire(b, bc, member, node.body[i + 1] if i + 1 < len(node.body) else f"{name}__check", loop=name)

    def again(after: Any) -> str:
        return first if after["loops"][name]["next"] == "body" else succ

    again.__name__ = f"after_{name}"
    add_step(b, f"{name}__check", check, again, finish=FINISH, dests=(first, succ))


def _wire(b: StateGraph, bc: Build, name: str, succ: str, *, loop: Optional[str] = None) -> None:
    """Add node ``name`` and its ways on: ``succ``, its routes, its loop; ``_finish`` on failure.
    ``loop``: the loop whose body holds ``name`` (a route to it ends the pass: its check)."""
    node = bc.wf.spec.nodes[name]

    def target(to: str) -> str:
        return f"{loop}__check" if loop is not None and to == loop else _target(to)

    if isinstance(node, S.LoopNode):
        _wire_loop(b, bc, name, node, succ)
    elif isinstance(node, S.InspectNode) and node.for_each:
        _wire_fanout(b, bc, name, node, succ)
    elif isinstance(node, S.RouterNode):
        def pick(after: Any) -> str:
            return target(after["nodes"][name]["route"])

        pick.__name__ = f"route_{name}"
        dests = tuple(target(r.to) for r in node.routes) + (target(node.default),)
        add_step(b, name, make_node(bc, name, node), pick, finish=FINISH, dests=dests)
    else:
        add_step(b, name, make_node(bc, name, node), succ, finish=FINISH)


def compile_workflow(wf: Workflow, *, checkpointer: Any = None, write_files: bool = True):
    """Compile a loaded workflow to a LangGraph graph (``context_schema=WorkflowContext``).

    Run it with ``{"inputs": {...}}`` as the input and a ``WorkflowContext`` as the context (or
    use ``run_workflow``). ``write_files=False`` (sub-workflows) skips trace.json/report.html.
    """
    return _compile(wf, checkpointer, write_files, {})


def _compile(wf: Workflow, checkpointer: Any, write_files: bool, done: dict[int, Any]) -> Any:
    """``compile_workflow``; ``done``: the sub-workflows compiled so far (a file used twice, by id, is compiled once)."""
    spec = wf.spec
    for child in wf.children.values():
        if id(child) not in done:
            done[id(child)] = _compile(child, None, False, done)
    bc = Build(wf, {n: done[id(c)] for n, c in wf.children.items()})
    b = StateGraph(WorkflowState, context_schema=WorkflowContext)
    succ = {a: _target(z) for a, z in spec.edges}
    b.add_edge(START, INPUTS)
    add_step(b, INPUTS, _inputs_node(wf), succ["START"], finish=FINISH)
    b.add_node(FINISH, _finish_node(wf, write_files))
    b.add_edge(FINISH, END)
    body = {m for n in spec.nodes.values() if isinstance(n, S.LoopNode) for m in n.body}
    for name in spec.nodes:
        if name not in body:
            _wire(b, bc, name, succ.get(name, FINISH))
    return b.compile(checkpointer=checkpointer, name=spec.name)
