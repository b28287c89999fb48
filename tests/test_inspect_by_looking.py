"""Inspection by looking (issue 22, item 4): inspection re-encodes the decoded pixels by default,
claims the model writes are kept only when the request says what they say, and keep-best never
returns an image scoring below the first one (ties keep the earlier image)."""

from __future__ import annotations

import argparse
import inspect
import re
import threading

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lladauni.agent import build_graph, prompts
from lladauni.agent.cli import add_agent_command
from lladauni.model_core.training import phrasing, shapes
from tests.agent_fixtures import scripted_agent

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
RUNS = settings(FAST, max_examples=8)  # each example runs a whole graph


# ------------------------------------------------------------------------- the roundtrip default
def test_inspection_looks_at_the_decoded_pixels_by_default(tmp_path):
    assert inspect.signature(build_graph).parameters["retokenize"].default == "roundtrip"
    sub = argparse.ArgumentParser().add_subparsers()
    add_agent_command(sub)
    parser = sub.choices["agent"]
    assert parser.parse_args(["a red circle"]).retokenize == "roundtrip"
    assert parser.parse_args(["x", "--retokenize", "reuse"]).retokenize == "reuse"
    # the scripted backend takes codes, so only the default decides which path runs
    agent, _ = scripted_agent(tmp_path)
    r = agent.run("a red circle", graph="draw_inspect_refine", claims=["a red circle"])
    assert r.state["retokenize"] == "roundtrip" and [v["retokenize"] for v in r.state["verdicts"]] == ["roundtrip"]
    r = agent.run("a red circle", graph="draw_inspect_refine", claims=["a red circle"], retokenize="reuse")
    assert [v["retokenize"] for v in r.state["verdicts"]] == ["reuse"]


# ------------------------------------------------------------------------------ faithful claims
def test_faithful_claims_keeps_what_the_request_says():
    request = "a blue square at the center and a red circle at the top left"
    claims = ["a blue circle in the centre", "A blue square is in the middle", "The image shows a red circle",
              "There is a red circle in the upper left corner", "a green triangle", "the red circle is not at the top"]
    assert prompts.faithful_claims(claims, request) == [
        "A blue square is in the middle", "The image shows a red circle", "There is a red circle in the upper left corner"]
    assert prompts.faithful_claims(["two RED circles"], "a red circle") == ["a red circle"]
    assert prompts.faithful_claims(["red circles"], "A Red Circle.") == ["red circles"]
    assert prompts.faithful_claims(["the colour is blue"], "a blue square, color blue") == ["the colour is blue"]
    assert prompts.faithful_claims(["a square at the bottom"], "a square in the lower middle") == ["a square at the bottom"]
    assert prompts.faithful_claims(["a blue circle", "a cat"], "a blue square") == ["a blue square"]
    # words of two requested shapes do not make a third: each clause of a claim needs one clause of the request
    assert prompts.faithful_claims(["a blue circle", "a red circle and a blue square", "a red square"],
                                   "a red circle at the top, a blue square") == ["a red circle and a blue square"]
    assert prompts.faithful_claims([], "a blue square") == ["a blue square"]
    # what the kept claims leave out of the request is checked too
    assert prompts.faithful_claims(["a red circle at the top left"],
                                   "Draw a red circle at the top left and a blue square in the middle.") == [
        "a red circle at the top left", "a blue square in the middle"]
    assert prompts.content_words("The boxes, two crosses and the Middle") == {"box", "two", "cross", "centre"}


def _scene(draw) -> shapes.Scene:
    n = draw(st.integers(1, 3))
    cells = draw(st.permutations(shapes.POSITIONS))[:n]
    colors = draw(st.permutations(tuple(shapes.COLORS)))[:n]
    kinds = [draw(st.sampled_from(shapes.SHAPES)) for _ in range(n)]
    return shapes.Scene(tuple(shapes.Shape(k, c, p) for k, c, p in zip(kinds, colors, cells)))


@FAST
@given(data=st.data(), split=st.sampled_from(["train", "heldout"]), seed=st.integers(0, 2**32 - 1))
def test_every_true_claim_survives_any_phrasing_and_an_invented_one_does_not(data, split, seed):
    scene = _scene(data.draw)
    request = phrasing.request_text(scene, np.random.default_rng(seed), split)
    true_claims = [s.describe() for s in scene]
    assert prompts.faithful_claims(true_claims, request) == true_claims, request
    other = next(c for c in tuple(shapes.COLORS) if c not in {s.color for s in scene})
    wrong_kind = next(k for k in shapes.SHAPES if k not in {s.kind for s in scene})
    first = scene.shapes[0]
    invented = [f"a {other} {first.kind} {shapes.position_phrase(first.position)}",
                f"a {first.color} {wrong_kind} {shapes.position_phrase(first.position)}"]
    assert prompts.faithful_claims(invented + true_claims, request) == true_claims, request


def test_model_claims_that_invent_are_dropped_and_recorded(tmp_path):
    """The demo's bug: "a blue square ..." became the claim "a blue circle ..."."""
    request = "a red circle at the top left and a blue square in the center"
    reply = "1. a red circle at the top left\n2. a blue circle in the center\n3. a blue square in the middle"
    agent, _ = scripted_agent(tmp_path, replies={"chat": reply})
    r = agent.run(request, graph="draw_inspect_refine")
    assert r.state["claims"] == ["a red circle at the top left", "a blue square in the middle"]
    ev = next(e for e in r.state["timeline"] if e["kind"] == "claims")
    assert ev["data"]["source"] == "model" and ev["data"]["dropped"] == ["a blue circle in the center"]
    assert ev["data"]["claims"] == r.state["claims"]
    # nothing faithful: the whole request is checked; a user's own claims are kept as given
    agent, _ = scripted_agent(tmp_path / "b", replies={"chat": "a green triangle\na cat"})
    r = agent.run("a blue square", graph="draw_inspect_refine")
    ev = next(e for e in r.state["timeline"] if e["kind"] == "claims")
    assert r.state["claims"] == ["a blue square"] and ev["data"]["source"] == "request"
    assert ev["data"]["dropped"] == ["a green triangle", "a cat"]
    r = agent.run("a blue square", graph="draw_inspect_refine", claims=["a blue circle"])
    assert r.state["claims"] == ["a blue circle"]


# ------------------------------------------------------------------------------------- keep-best
def _answers(plan: dict[str, list[bool]]):
    """An ``understand`` reply function: the n-th question about a claim gets ``plan[claim][n]``."""
    asked: dict[str, int] = {}
    lock = threading.Lock()

    def reply(question: str) -> str:
        claim = re.search(r'"(.*)"', question).group(1)
        with lock:
            n = asked.get(claim, 0)
            asked[claim] = n + 1
        return "yes" if plan[claim][min(n, len(plan[claim]) - 1)] else "no"

    return reply


def _run_rounds(tmp_path, rounds: list[tuple[bool, bool]]):
    plan = {"claim a": [a for a, _ in rounds], "claim b": [b for _, b in rounds]}
    agent, _ = scripted_agent(tmp_path, replies={"understand": _answers(plan)})
    return agent.run("p", graph="draw_inspect_refine", claims=["claim a", "claim b"], max_iterations=len(rounds))


def test_keep_best_keeps_the_first_of_equal_scores_and_never_a_worse_last(tmp_path):
    # scores 0.5, 0.0, 0.5: the last ties the first and the middle is worse; the first must win
    r = _run_rounds(tmp_path, [(True, False), (False, False), (True, False)])
    assert r.status == "capped" and len(r.state["images"]) == 3
    assert len({im["sha256"] for im in r.state["images"]}) == 3
    assert r.state["best"] == r.state["images"][0] and r.state["best_score"] == 0.5


@RUNS
@given(rounds=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4))
def test_keep_best_is_the_first_image_with_the_top_score(tmp_path_factory, rounds):
    r = _run_rounds(tmp_path_factory.mktemp("run"), rounds)
    judged = rounds[:next((i + 1 for i, (a, b) in enumerate(rounds) if a and b), len(rounds))]
    scores = [(a + b) / 2 for a, b in judged]
    assert len(r.state["images"]) == len(judged)
    top = scores.index(max(scores))
    assert r.state["best"] == r.state["images"][top] and r.state["best_score"] == max(scores)
    assert r.state["best_score"] >= scores[0]
