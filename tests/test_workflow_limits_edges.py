"""Edges of workflow loops and of the step bound the runner hands LangGraph: ``max_iterations``
accepted exactly from 1 to 1000 (anything else fails the run with a readable error), a loop
without ``until`` runs exactly its cap, the counters a body sees on each pass, the exit notes in
the timeline, and ``_step_bound`` equal to the number of graph steps a run at its caps takes (the
smallest ``recursion_limit`` LangGraph lets it finish with). The workflows are made of ``call``
nodes (registered Python functions), so no model runs."""

from __future__ import annotations

from typing import Optional

import pytest
from langgraph.errors import GraphRecursionError

from lladauni.agent import ScriptedBackend
from lladauni.agent.workflows import compile_workflow, loads_workflow, run_workflow
from lladauni.agent.workflows.compiler import MAX_LOOP_ITERATIONS, WorkflowContext
from lladauni.agent.workflows.runner import _step_bound


def _loop_workflow(max_iterations: str = "inputs.n", until: Optional[str] = None) -> str:
    """before -> rounds(loop: work, note) -> after; ``work`` reports the loop's counters of its pass."""
    until_line = f"    until: {until!r}\n" if until else ""
    return (
        "version: 1\n"
        "name: loop-edges\n"
        "inputs: {n: {type: json, default: 3}}\n"
        "nodes:\n"
        "  before: {kind: call, function: mark, args: {tag: 0}}\n"
        "  rounds:\n"
        "    kind: loop\n"
        "    body: [work, note]\n"
        f"{until_line}"
        f"    max_iterations: {max_iterations}\n"
        "  work: {kind: call, function: work, args: {i: nodes.rounds.iteration, capped: nodes.rounds.capped}}\n"
        "  note: {kind: call, function: mark, args: {tag: 1}}\n"
        "  after: {kind: call, function: mark, args: {tag: 2}}\n"
        "edges: [[START, before], [before, rounds], [rounds, after], [after, END]]\n"
        "outputs: {passes: nodes.rounds.iteration, capped: nodes.rounds.capped}\n"
    )


def _load(text: str, seen: Optional[list] = None):
    seen = [] if seen is None else seen

    def work(i, capped):
        seen.append((i, capped))
        return i

    return loads_workflow(text, functions={"work": work, "mark": lambda tag: tag, "tick": lambda: 1})


def _notes(state: dict, node: str) -> list[str]:
    return [e["text"] for e in state["timeline"] if e["node"] == node and e["kind"] == "note"]


# ---------------------------------------------------------------------------------- loop caps
def test_a_loop_without_until_runs_exactly_max_iterations_passes(tmp_path):
    seen: list = []
    r = run_workflow(_load(_loop_workflow(), seen), {"n": 3}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "capped" and r.error is None
    # each pass sees its own number (1-based) and "not capped yet"; the cap is known only after the last pass
    assert seen == [(1, False), (2, False), (3, False)]
    assert r.state["loops"]["rounds"] == {"iteration": 3, "max": 3, "capped": True, "next": "exit"}
    assert r.state["nodes"]["rounds"] == {"iteration": 3, "capped": True}
    assert r.state["outputs"] == {"passes": 3, "capped": True}
    assert r.state["iteration"] == 3 and r.state["max_iterations"] == 3
    assert _notes(r.state, "rounds") == ["loop starts (at most 3 passes)", "stopped at the cap of 3 passes"]


def test_a_cap_of_one_runs_the_body_once(tmp_path):
    seen: list = []
    r = run_workflow(_load(_loop_workflow(), seen), {"n": 1}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "capped" and seen == [(1, False)]
    assert r.state["outputs"] == {"passes": 1, "capped": True}
    assert _notes(r.state, "rounds") == ["loop starts (at most 1 passes)", "stopped at the cap of 1 passes"]


def test_until_ends_the_loop_after_the_pass_where_it_holds(tmp_path):
    seen: list = []
    wf = _load(_loop_workflow(until="nodes.work.value >= 2"), seen)
    r = run_workflow(wf, {"n": 5}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "done" and seen == [(1, False), (2, False)]
    assert r.state["loops"]["rounds"] == {"iteration": 2, "max": 5, "capped": False, "next": "exit"}
    assert r.state["outputs"] == {"passes": 2, "capped": False}
    assert _notes(r.state, "rounds") == ["loop starts (at most 5 passes)", "until is true after pass 2"]
    assert [e["node"] for e in r.state["timeline"]][-2:] == ["rounds", "after"]


@pytest.mark.parametrize("n", [1, MAX_LOOP_ITERATIONS])
def test_max_iterations_accepts_1_and_the_hard_maximum_1000(tmp_path, n):
    assert MAX_LOOP_ITERATIONS == 1000  # the schema's bound for a literal max_iterations too
    seen: list = []
    r = run_workflow(_load(_loop_workflow(until="true"), seen), {"n": n}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "done" and r.error is None and seen == [(1, False)]
    assert r.state["loops"]["rounds"]["max"] == n and r.state["max_iterations"] == n


@pytest.mark.parametrize("n", [0, -1, 1001, True, False, "3", 2.0, None, [2]])
def test_max_iterations_outside_1_to_1000_or_not_an_integer_fails_the_run(tmp_path, n):
    seen: list = []
    raw = '"3"' if n == "3" else n  # a json input given as a string is parsed: '"3"' is the string "3"
    r = run_workflow(_load(_loop_workflow(), seen), {"n": raw}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "failed" and seen == []  # the body never runs
    assert r.error == f"rounds failed: ValueError: rounds.max_iterations = {n!r}: expected an integer from 1 to 1000"
    assert "after" not in r.state["nodes"] and r.report_path.is_file()


def test_the_iteration_counter_counts_the_passes_of_all_loops_together(tmp_path):
    text = """\
version: 1
name: two-loops
nodes:
  first: {kind: loop, body: [a], max_iterations: 2}
  a: {kind: call, function: tick}
  second: {kind: loop, body: [b], max_iterations: 3}
  b: {kind: call, function: tick}
edges: [[START, first], [first, second], [second, END]]
outputs: {}
"""
    r = run_workflow(_load(text), {}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "capped" and r.state["iteration"] == 5
    passes = [(e["node"], e["iteration"]) for e in r.state["timeline"] if e["node"] in ("a", "b")]
    assert passes == [("a", 1), ("a", 2), ("b", 3), ("b", 4), ("b", 5)]
    assert r.state["loops"]["first"]["iteration"] == 2 and r.state["loops"]["second"]["iteration"] == 3


# ------------------------------------------------------------------------------- step bound
LINEAR = """\
version: 1
name: linear
nodes:
  a: {kind: call, function: tick}
  b: {kind: call, function: tick}
edges: [[START, a], [a, b], [b, END]]
outputs: {}
"""

NESTED = """\
version: 1
name: nested
nodes:
  outer: {kind: loop, body: [inner, x], max_iterations: 2}
  inner: {kind: loop, body: [y], max_iterations: 3}
  x: {kind: call, function: tick}
  y: {kind: call, function: tick}
edges: [[START, outer], [outer, END]]
outputs: {}
"""

DYNAMIC = """\
version: 1
name: dynamic
inputs: {n: {type: integer}}
nodes:
  spin: {kind: loop, body: [tick], max_iterations: inputs.n}
  tick: {kind: call, function: tick}
edges: [[START, spin], [spin, END]]
outputs: {}
"""


FANOUT = """\
version: 1
name: fanout
inputs: {img: {type: image}}
nodes:
  look: {kind: inspect, image: inputs.img, for_each: "['a', 'b', 'c']", question: "{{ item }}?"}
edges: [[START, look], [look, END]]
outputs: {}
"""


def _finishes_within(wf, inputs: dict, limit: int, tmp_path) -> Optional[dict]:
    """Run the compiled graph under ``recursion_limit=limit``: the final state, or None when
    LangGraph stops it for taking more steps than that."""
    graph = compile_workflow(wf, write_files=False)
    ctx = WorkflowContext(backend=ScriptedBackend(), run_dir=str(tmp_path))
    try:
        return graph.invoke({"inputs": inputs}, {"recursion_limit": limit}, context=ctx)
    except GraphRecursionError:
        return None


# Steps counted by hand: LangGraph's input step, _inputs, each node run, each loop entry and each
# check after a pass, _finish.
@pytest.mark.parametrize("text,inputs,steps", [
    (LINEAR, {}, 1 + 1 + 2 + 1),
    # before, rounds (entry), 3 x (work, note, rounds__check), after
    (_loop_workflow("3"), {}, 1 + 1 + 1 + 1 + 3 * 3 + 1 + 1),
    (_loop_workflow("1"), {}, 1 + 1 + 1 + 1 + 1 * 3 + 1 + 1),
    # outer entry, 2 x (inner entry, 3 x (y, inner__check), x, outer__check)
    (NESTED, {}, 1 + 1 + 1 + 2 * (1 + 3 * 2 + 1 + 1) + 1),
    # a fan-out is three steps: send, the parallel inspections (one step), gather
    (FANOUT, {"img": __import__("PIL.Image").Image.new("RGB", (8, 8))}, 1 + 1 + 3 + 1),
], ids=["linear", "loop-cap-3", "loop-cap-1", "nested-loops", "fan-out"])
def test_step_bound_is_the_number_of_steps_a_run_at_its_caps_takes(tmp_path, text, inputs, steps):
    wf = _load(text)
    assert _step_bound(wf) == steps
    final = _finishes_within(wf, inputs, steps, tmp_path / "a")
    assert final is not None and final["status"] in ("done", "capped") and final["error"] is None
    assert _finishes_within(wf, inputs, steps - 1, tmp_path / "b") is None  # one step fewer is not enough


def test_step_bound_counts_an_expression_cap_as_the_hard_maximum(tmp_path):
    wf = _load(DYNAMIC)
    steps = 1 + 1 + 1 + MAX_LOOP_ITERATIONS * 2 + 1  # input step, _inputs, entry, 1000 x (tick, check), _finish
    assert _step_bound(wf) == steps == 2004
    final = _finishes_within(wf, {"n": MAX_LOOP_ITERATIONS}, steps, tmp_path / "a")
    assert final is not None and final["status"] == "capped" and final["loops"]["spin"]["iteration"] == 1000
    assert _finishes_within(wf, {"n": MAX_LOOP_ITERATIONS}, steps - 1, tmp_path / "b") is None
