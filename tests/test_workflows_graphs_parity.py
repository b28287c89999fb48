"""The four Python graphs (``graph.py``) and the bundled workflows that express them, run on the
same ScriptedBackend replies: the same model calls (method and prompt text, in order) and the
same final answer and status.

Different by design, and not compared: node names (a workflow's ends are ``_inputs``/``_finish``
where a graph has ``start``/``finish``; ``think``/``act``/... are workflow nodes where the graph
has one node doing several things), the timeline events, the seeds of image calls (a workflow
seeds by loop pass) and the state keys besides ``answer``/``status``/``best`` (a workflow keeps
node outputs under ``nodes``). Inspections that fan out run in parallel, so the calls of one
fan-out are compared as a set (sorted), in place.
"""

from __future__ import annotations

from typing import Any

import pytest

from lladauni.agent import ScriptedBackend
from lladauni.agent.workflows import WorkflowError, load_workflow, loads_workflow, run_workflow
from tests.agent_fixtures import scripted_agent


def _calls(b: ScriptedBackend) -> list[tuple[str, str]]:
    """The backend's calls, each run of consecutive ``understand`` calls sorted (parallel fan-outs)."""
    out: list[tuple[str, str]] = []
    run: list[tuple[str, str]] = []
    for c in b.calls + [("", "")]:
        if c[0] == "understand":
            run.append(c)
            continue
        out += sorted(run) + ([c] if c[0] else [])
        run = []
    return out


def _both(tmp_path, graph: str, workflow: str, inputs: dict[str, Any], replies: Any = None,
          graph_kw: Any = None, ok: bool = True, **backend_kw: Any):
    """Run ``graph`` and ``workflow`` on backends with the same scripted replies (``replies``: a
    dict, or a function making a fresh dict per backend, for replies that keep count)."""
    fresh = replies if callable(replies) else (lambda: replies)
    agent, gb = scripted_agent(tmp_path / "graph", replies=fresh(), **backend_kw)
    g = agent.run(inputs.get("prompt") or inputs["question"], graph=graph, **dict(graph_kw or {}))
    wb = ScriptedBackend(replies=fresh(), **backend_kw)
    w = run_workflow(workflow, inputs, wb, run_dir=tmp_path / "workflow")
    if ok:
        assert g.error is None and w.error is None, (g.error, w.error)
    assert _calls(wb) == _calls(gb)
    assert (w.status, w.state.get("answer", "")) == (g.status, g.state.get("answer", ""))
    return g, w, gb, wb


# ------------------------------------------------------------------------- interleaved_story
@pytest.mark.parametrize("frames", [1, 2, 4])
def test_interleaved_story_graph_and_workflow_agree(tmp_path, frames):
    g, w, gb, _ = _both(tmp_path, "interleaved_story", "interleaved-story-graph", {"prompt": "a fox", "frames": frames},
                        graph_kw={"max_iterations": frames}, interleaved=["a", "<image>", "b", "<image>", "c", "<image>"])
    assert [m for m, _ in gb.calls] == ["generate_interleaved"]
    assert len(w.state["outputs"]["scenes"]) == len(g.images) == min(frames, 3)
    assert w.state["outputs"]["story"] == g.answer


# ---------------------------------------------------------------------------- plan_then_draw
@pytest.mark.parametrize("plan", ["A red fox in snow, seen from the side.\nWarm light.", "<|tiny_unused_1|><IMAGE3>"])
def test_plan_then_draw_graph_and_workflow_agree(tmp_path, plan):
    """A usable plan is appended to the request; an unusable one is dropped (the graph's fallback)."""
    g, w, gb, wb = _both(tmp_path, "plan_then_draw", "plan-then-draw", {"prompt": "a red fox"}, replies={"chat": plan})
    drawn = gb.calls[-1][1]
    assert drawn == ("a red fox" if plan.startswith("<|") else f"a red fox. {plan}")
    assert w.state["best"] is not None and g.state["best"] is not None


def test_the_bundled_graph_workflows_validate():
    for name in ("interleaved-story-graph", "plan-then-draw", "draw-inspect-refine-graph", "visual-reasoning-graph"):
        assert load_workflow(name).name == name


# ----------------------------------------------------------------------- draw_inspect_refine
def _best_index(r) -> int:
    best = r.state["outputs"]["image"] if "outputs" in r.state else r.state["best"]
    return [i["sha256"] for i in r.state["images"]].index(best["sha256"])


def test_draw_inspect_refine_all_claims_pass_first_time(tmp_path):
    g, w, gb, _ = _both(tmp_path, "draw_inspect_refine", "draw-inspect-refine-graph", {"prompt": "a red cat under a blue sky"},
                        replies={"chat": "1. a red cat\n2. a blue sky", "understand": "Yes."})
    assert g.status == "done" and [m for m, _ in gb.calls] == ["chat", "generate_image", "understand", "understand"]
    assert w.state["outputs"]["score"] == g.state["best_score"] == 1.0


@pytest.mark.parametrize("claims,reply,refine", [
    (["a cat", "a hat"], "cat", "auto"),     # half pass: edit
    (["a dog", "a hat"], "never", "auto"),   # none pass: redraw
    (["a", "b", "c"], "a", "edit"),
    (["a", "b"], "never", "redraw"),
])
def test_draw_inspect_refine_edits_or_redraws_up_to_the_cap(tmp_path, claims, reply, refine):
    replies = {"understand": lambda q: "yes" if reply in q.split('"')[1] else "no"}
    g, w, gb, _ = _both(tmp_path, "draw_inspect_refine", "draw-inspect-refine-graph",
                        {"prompt": "x", "claims": claims, "max_rounds": 2, "refine": refine}, replies=replies,
                        graph_kw={"claims": claims, "max_iterations": 2, "refine": refine})
    assert g.status == "capped" and len(w.state["images"]) == len(g.images) == 2
    assert _best_index(w) == _best_index(g)


def test_draw_inspect_refine_keeps_the_best_image_at_the_cap(tmp_path):
    def replies():  # per claim, one answer per round: scores 0/2, 1/2, 0/2 -> round 2's image is the best
        left = {"c1": ["no", "yes", "no"], "c2": ["no", "no", "no"]}
        return {"understand": lambda q: left[q.split('"')[1]].pop(0)}

    g, w, gb, _ = _both(tmp_path, "draw_inspect_refine", "draw-inspect-refine-graph",
                        {"prompt": "p", "claims": ["c1", "c2"], "max_rounds": 3, "refine": "redraw"}, replies=replies,
                        graph_kw={"claims": ["c1", "c2"], "max_iterations": 3, "refine": "redraw"})
    assert g.status == "capped" and _best_index(w) == _best_index(g) == 1
    assert w.state["outputs"]["score"] == g.state["best_score"] == 0.5


def test_draw_inspect_refine_unparseable_claims_check_the_request(tmp_path):
    g, w, _, wb = _both(tmp_path, "draw_inspect_refine", "draw-inspect-refine-graph", {"prompt": "a lighthouse at dusk"},
                        replies={"chat": "<|tiny_unused_1|><IMAGE12>"})
    assert g.state["claims"] == ["a lighthouse at dusk"] and w.state["nodes"]["inspect"]["for_each"] == g.state["claims"]


def test_draw_inspect_refine_failure_stops_both(tmp_path):
    g, w, _, _ = _both(tmp_path, "draw_inspect_refine", "draw-inspect-refine-graph",
                       {"prompt": "p", "claims": ["a", "b", "c"], "refine": "edit"}, replies={"understand": "no"},
                       graph_kw={"claims": ["a", "b", "c"], "refine": "edit"}, ok=False, fail_on={"edit_image": 1})
    assert g.status == w.status == "failed" and "BackendError" in g.error and "BackendError" in w.error


# -------------------------------------------------------------------------- visual_reasoning
@pytest.mark.parametrize("chat", [
    ["I should draw it. SKETCH: a right triangle", "ANSWER: 5"],
    ["ANSWER: 4"],
    ["no tags at all, just a thought"],
    ["SKETCH: a", "SKETCH: b", "ANSWER: c"],
])
def test_visual_reasoning_graph_and_workflow_agree(tmp_path, chat):
    _both(tmp_path, "visual_reasoning", "visual-reasoning-graph", {"question": "hypotenuse of a 3-4 right triangle?"},
          replies={"chat": chat, "understand": "the hypotenuse is 5"})


def test_visual_reasoning_cap_forces_a_final_answer(tmp_path):
    replies = {"chat": lambda p: "ANSWER: 7" if p.startswith("Answer the question now") else "SKETCH: more lines"}
    g, w, gb, _ = _both(tmp_path, "visual_reasoning", "visual-reasoning-graph", {"question": "q", "max_sketches": 2},
                        replies=replies, graph_kw={"max_iterations": 2})
    assert g.status == "capped" and g.answer == "7"
    assert [m for m, _ in gb.calls] == ["chat", "generate_image", "understand"] * 2 + ["chat", "chat"]


def test_visual_reasoning_draws_on_the_input_image(tmp_path):
    from PIL import Image

    p = tmp_path / "in.png"
    Image.new("RGB", (32, 32)).save(p)
    replies = {"chat": ["SKETCH: a diagonal", "ANSWER: two triangles"]}
    agent, gb = scripted_agent(tmp_path / "graph", replies=replies)
    g = agent.run("cut a square along a diagonal: what shapes?", images=[p], graph="visual_reasoning")
    wb = ScriptedBackend(replies=replies)
    w = run_workflow("visual-reasoning-graph", {"question": "cut a square along a diagonal: what shapes?", "images": [str(p)]},
                     wb, run_dir=tmp_path / "workflow")
    assert _calls(wb) == _calls(gb) and [m for m, _ in gb.calls] == ["chat", "edit_image", "understand", "chat"]
    assert w.answer == g.answer == "two triangles" and w.status == g.status == "done"


# ------------------------------------------------------- what the graph workflows needed: checks
_LOOP = """\
version: 1
name: routed-loop
inputs: {n: {type: integer, default: 3}}
nodes:
  rounds: {kind: loop, body: [a, pick, b, c], max_iterations: inputs.n}
  a: {kind: call, function: value, args: {value: loops.rounds.iteration}}
  pick:
    kind: router
    routes: [{when: "nodes.a.value == 1", to: c}, {when: "nodes.a.value == 2", to: rounds}]
    default: b
  b: {kind: call, function: value, args: {value: "'b'"}}
  c: {kind: call, function: concat, args: {first: "nodes.c.value if nodes.c is defined else []", second: [x]}}
  look:
    kind: inspect
    for_each: "['one', 'two', 'three']"
    image: inputs.pic
    question: "Is {{ item }} ({{ index }}) there?"
    verdict: yes_no
edges: [[START, rounds], [rounds, END]]
"""


def test_a_router_in_a_loop_body_skips_ahead_or_ends_the_pass(tmp_path):
    text = _LOOP.replace("  look:\n", "  unused:\n").split("  unused:")[0] + "edges: [[START, rounds], [rounds, END]]\n"
    r = run_workflow(loads_workflow(text), {}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "capped"
    routes = [e["text"] for e in r.state["timeline"] if e["node"] == "pick"]
    assert routes == ["route -> c", "route -> rounds", "route -> b"]
    assert r.state["nodes"]["c"]["value"] == ["x", "x"] and r.state["nodes"]["b"]["value"] == "b"


@pytest.mark.parametrize("change,message", [
    (("to: c}", "to: a}"), "router 'pick' in the body of loop 'rounds' cannot route back to 'a'"),
    (("default: b", "default: pick"), "cannot route back to 'pick'"),
    (("to: rounds}", "to: END}"), "router 'pick' is in the body of loop 'rounds' and cannot leave it to 'END'"),
])
def test_routes_in_a_loop_body_are_checked(change, message):
    text = _LOOP.split("  look:")[0] + "edges: [[START, rounds], [rounds, END]]\n"
    with pytest.raises(WorkflowError, match=message):
        loads_workflow(text.replace(*change))


def test_an_inspect_fan_out_gathers_in_order(tmp_path):
    from PIL import Image

    text = _LOOP.replace("inputs: {n: {type: integer, default: 3}}", "inputs: {n: {type: integer, default: 1}, pic: {type: image}}")
    text = text.replace("edges: [[START, rounds], [rounds, END]]", "edges: [[START, rounds], [rounds, look], [look, END]]")
    wf = loads_workflow(text)
    b = ScriptedBackend(replies={"understand": lambda q: "yes" if "two" in q else "no"})
    r = run_workflow(wf, {"pic": Image.new("RGB", (8, 8))}, b, run_dir=tmp_path / "run")
    out = r.state["nodes"]["look"]
    assert out["for_each"] == ["one", "two", "three"] and out["verdict"] == [False, True, False]
    assert out["text"] == ["no", "yes", "no"] and sorted(q for _, q in b.calls) == [
        "Is one (0) there?", "Is three (2) there?", "Is two (1) there?"]
    with pytest.raises(WorkflowError, match="undefined template variable 'item'"):  # only the fan-out sees item
        loads_workflow(text.replace("value: \"'b'\"", "value: item"))
