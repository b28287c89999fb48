"""The four graphs end to end: on the tiny checkpoint through LocalBackend, and routing, caps,
failures, review and streaming through a ScriptedBackend whose answers the tests choose."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from lladauni.agent import GRAPHS, Agent, LocalBackend, build_graph
from tests.agent_fixtures import comparable, methods, scripted_agent, tiny_agent, tiny_backend  # noqa: F401


def _no_pixels(state: dict) -> None:
    text = json.dumps(state)
    assert "base64" not in text and len(text) < 60_000
    for ref in state.get("images", []):
        assert set(ref) == {"sha256", "png", "codes", "h", "w", "width", "height", "origin"}


def _files_ok(r) -> None:
    assert r.trace_path.is_file() and r.report_path.is_file()
    trace = json.loads(r.trace_path.read_text())
    assert trace["state"]["status"] == r.status
    html = r.report_path.read_text()
    for p in r.images:
        assert p.is_file() and p.parent.parent == r.run_dir
    if r.images:
        assert "data:image/png;base64," in html


# ------------------------------------------------------------------ tiny checkpoint, LocalBackend
def test_plan_then_draw_local(tiny_backend, tmp_path):
    before = tiny_backend.calls.copy()
    r = tiny_agent(tiny_backend, tmp_path).run("a red cat under a blue sky", graph="plan_then_draw")
    assert r.status == "done", r.error
    assert len(r.images) == 1 and r.best_image == r.images[0]
    from PIL import Image

    assert Image.open(r.images[0]).size == (256, 256)
    ref = r.state["images"][0]
    assert (ref["h"], ref["w"]) == (8, 8) and ref["codes"].endswith(".safetensors")
    calls = tiny_backend.calls - before
    assert calls == {"chat": 1, "generate_image": 1}
    _no_pixels(r.state)
    _files_ok(r)


def test_thinking_planner_failure_is_a_readable_message(tiny_backend, tmp_path):
    """The tiny model never writes an image header: the run stops cleanly with the reason."""
    r = tiny_agent(tiny_backend, tmp_path).run("a red cat", graph="plan_then_draw", planner="thinking")
    assert r.status == "failed"
    assert r.error.startswith("draw failed: GenerationError: thinking phase ended without an image header")
    assert r.state["images"] == [] and r.state["timeline"][-1]["kind"] == "error"
    assert "thinking phase ended" in r.report_path.read_text()


@pytest.mark.parametrize("retokenize", ["reuse", "roundtrip"])
def test_draw_inspect_refine_local(tiny_backend, tmp_path, retokenize):
    before = tiny_backend.calls.copy()
    r = tiny_agent(tiny_backend, tmp_path).run(
        "a red cat under a blue sky", graph="draw_inspect_refine", max_iterations=2, retokenize=retokenize,
        claims=["a red cat", "a blue sky"])
    assert r.status in ("done", "capped"), r.error
    assert r.state["retokenize"] == retokenize
    verdicts = r.state["verdicts"]
    assert {v["retokenize"] for v in verdicts} == {retokenize}
    rounds = r.state["iteration"]
    assert 1 <= rounds <= 2 and len(verdicts) == 2 * rounds and len(r.images) == rounds
    calls = tiny_backend.calls - before
    assert calls["understand"] == 2 * rounds
    assert calls["generate_image"] + calls["edit_image"] == rounds
    best = r.state["best"]
    assert best["sha256"] in {v["image"] for v in verdicts}
    _no_pixels(r.state)
    _files_ok(r)


def test_visual_reasoning_local_sketches_and_answers(tiny_backend, tmp_path):
    before = tiny_backend.calls.copy()
    r = tiny_agent(tiny_backend, tmp_path).run("how many sides has a square?", graph="visual_reasoning",
                                               sketch="always", max_iterations=1)
    assert r.status in ("done", "capped"), r.error
    calls = tiny_backend.calls - before
    assert calls["generate_image"] == 1 and calls["understand"] == 1 and calls["chat"] == 2
    assert r.state["iteration"] == 1 and r.state["images"][0]["origin"] == "sketch"
    assert [e["node"] for e in r.state["timeline"]][:5] == ["start", "think", "sketch", "observe", "think"]
    assert isinstance(r.answer, str)
    _files_ok(r)


def test_visual_reasoning_local_reads_input_images(tiny_backend, tmp_path):
    """Input images go to chat as codes (the tiny model's editing grid is too slow for CPU tests;
    drawing on an input image is covered with the scripted backend)."""
    from PIL import Image

    src = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(src)
    before = tiny_backend.calls.copy()
    r = tiny_agent(tiny_backend, tmp_path).run("what colour is the square?", images=[src], graph="visual_reasoning",
                                               sketch="never")
    assert r.status == "done", r.error
    assert (tiny_backend.calls - before) == {"encode_image": 1, "chat": 1}
    assert r.state["inputs"][0]["origin"] == "input" and r.state["images"] == []
    _files_ok(r)


def test_visual_reasoning_draws_on_the_input_image(tmp_path):
    from PIL import Image

    agent, b = scripted_agent(tmp_path, replies={"chat": ["SKETCH: a diagonal", "ANSWER: two triangles"]})
    r = agent.run("cut a square along a diagonal: what shapes?", images=[Image.new("RGB", (32, 32))],
                  graph="visual_reasoning")
    assert r.answer == "two triangles" and methods(b) == ["chat", "edit_image", "understand", "chat"]


def test_interleaved_story_local(tiny_backend, tmp_path):
    before = tiny_backend.calls.copy()
    r = tiny_agent(tiny_backend, tmp_path).run("a story about a cat", graph="interleaved_story", max_iterations=2)
    assert r.status == "done", r.error
    assert (tiny_backend.calls - before) == {"generate_interleaved": 1}
    assert r.state["iteration"] == len(r.images) <= 2
    _files_ok(r)


def test_local_backend_serialises_concurrent_calls(tmp_path):
    """Two graph runs on one model never overlap forwards."""
    active, overlap = [0], [False]
    guard = threading.Lock()

    class SlowModel:
        device = "cpu"

        def chat(self, *a, **k):
            with guard:
                active[0] += 1
                overlap[0] |= active[0] > 1
            time.sleep(0.05)
            with guard:
                active[0] -= 1
            from lladauni.model_core.generation.results import GenerationStats, TextResult

            return TextResult("ANSWER: four", [], [], GenerationStats())

    agent = Agent(LocalBackend(model=SlowModel()), runs_dir=tmp_path)

    async def both():
        return await asyncio.gather(*(agent.arun(f"question {i}", graph="visual_reasoning") for i in range(3)))

    results = asyncio.run(both())
    assert [r.answer for r in results] == ["four"] * 3 and not overlap[0]
    with pytest.raises(ValueError, match="did not load"):
        agent.backend.unload()


# --------------------------------------------------------------------- scripted: routing and caps
def test_all_claims_pass_first_time_stops_after_one_round(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"chat": "1. a red cat\n2. a blue sky", "understand": "Yes."})
    r = agent.run("a red cat under a blue sky", graph="draw_inspect_refine")
    assert r.status == "done" and r.state["claims"] == ["a red cat", "a blue sky"]
    assert methods(b) == ["chat", "generate_image", "understand", "understand"]
    assert r.state["best_score"] == 1.0 and r.state["best"] == r.state["images"][0]


def test_refine_edits_when_most_claims_pass_and_redraws_otherwise(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"understand": lambda q: "yes" if "cat" in q else "no"})
    r = agent.run("x", graph="draw_inspect_refine", claims=["a cat", "a hat"], max_iterations=2)
    assert r.status == "capped" and methods(b).count("edit_image") == 1
    assert b.calls[-3] == ("edit_image", "Change the image so that: a hat.")

    agent, b = scripted_agent(tmp_path / "2", replies={"understand": "no"})
    r = agent.run("a dog", graph="draw_inspect_refine", claims=["a dog", "a hat"], max_iterations=2)
    assert methods(b).count("generate_image") == 2 and "edit_image" not in methods(b)
    assert r.state["current_prompt"] == "a dog. Make sure that: a dog; a hat."
    assert r.state["best"] == r.state["images"][0]  # ties keep the earlier image


def test_iteration_cap_is_hard_and_best_image_is_kept(tmp_path):
    # scores per round: 0/2, 1/2, 0/2 -> round 2's image is the best
    answers = iter(["no", "no", "yes", "no", "no", "no"])
    lock = threading.Lock()

    def reply(q):
        with lock:
            return next(answers)

    agent, b = scripted_agent(tmp_path, replies={"understand": reply})
    r = agent.run("p", graph="draw_inspect_refine", claims=["c1", "c2"], max_iterations=3, refine="redraw")
    assert r.status == "capped" and r.state["iteration"] == 3
    assert methods(b).count("generate_image") == 3 and methods(b).count("understand") == 6
    assert r.state["best"] == r.state["images"][1] and r.state["best_score"] == 0.5
    html = r.report_path.read_text()
    assert html.count("<tr><td>") == 2 and "round 3" in html


def test_unparseable_claims_fall_back_to_the_request(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"chat": "<|tiny_unused_1|><IMAGE12>"})
    r = agent.run("a lighthouse at dusk", graph="draw_inspect_refine")
    assert r.state["claims"] == ["a lighthouse at dusk"]
    assert any(e["kind"] == "note" for e in r.state["timeline"])


def test_visual_reasoning_routes_sketch_observe_answer(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"chat": ["I should draw it. SKETCH: a right triangle", "ANSWER: 5"],
                                                 "understand": "the hypotenuse is 5"})
    r = agent.run("hypotenuse of a 3-4 right triangle?", graph="visual_reasoning")
    assert r.status == "done" and r.answer == "5"
    assert methods(b) == ["chat", "generate_image", "understand", "chat"]
    assert b.calls[1] == ("generate_image", "a right triangle")
    assert r.state["notes"][1] == "Observation: the hypotenuse is 5"


def test_visual_reasoning_cap_forces_a_final_answer(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"chat": lambda p: "ANSWER: 7" if p.startswith("Answer the question now")
                                                 else "SKETCH: more lines"})
    r = agent.run("q", graph="visual_reasoning", max_iterations=2)
    assert r.status == "capped" and r.answer == "7" and r.state["iteration"] == 2
    assert methods(b) == ["chat", "generate_image", "understand"] * 2 + ["chat", "chat"]


def test_interleaved_frames_are_capped(tmp_path):
    agent, b = scripted_agent(tmp_path, interleaved=["a", "<image>", "b", "<image>", "c", "<image>"])
    r = agent.run("story", graph="interleaved_story", max_iterations=2)
    assert r.state["iteration"] == 2 and len(r.images) == 2 and r.answer == "a\n\nb\n\nc"
    kinds = [e["kind"] for e in r.state["timeline"] if e["node"] == "interleave"]
    assert kinds == ["text", "image", "text", "image", "text"]


# ------------------------------------------------------------------------------ failures
def test_failed_model_call_stops_the_run_cleanly(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"understand": "no"}, fail_on={"edit_image": 1})
    r = agent.run("p", graph="draw_inspect_refine", claims=["a", "b", "c"], max_iterations=3, refine="edit")
    assert r.status == "failed"
    assert r.error == "refine failed: BackendError: scripted failure in edit_image (call 1)"
    assert methods(b) == ["generate_image", "understand", "understand", "understand"]  # nothing after the failure
    assert len(r.state["images"]) == 1 and len(r.state["verdicts"]) == 3  # state intact
    assert json.loads(r.trace_path.read_text())["state"]["error"] == r.error


def test_failed_inspection_becomes_the_error(tmp_path):
    agent, b = scripted_agent(tmp_path, fail_on={"understand": 2})
    r = agent.run("p", graph="draw_inspect_refine", claims=["a", "b"])
    assert r.status == "failed" and "inspect failed on claim" in r.error and "scripted failure" in r.error
    assert "refine" not in [e["node"] for e in r.state["timeline"]]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown graph 'nope'"):
        build_graph("nope")
    with pytest.raises(ValueError, match="retokenize='pixels'"):
        build_graph("draw_inspect_refine", retokenize="pixels")
    with pytest.raises(ValueError, match="max_iterations=0"):
        build_graph("visual_reasoning", max_iterations=0)
    agent = Agent(object(), runs_dir="/nonexistent-never-created")
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        agent.run("  ")
    with pytest.raises(ValueError, match="thread_id='../x'"):
        agent.run("p", thread_id="../x")


def test_graph_rejects_a_bad_cap_in_state(tmp_path):
    agent, b = scripted_agent(tmp_path)
    r = agent.run("p", graph="draw_inspect_refine", max_iterations=0)
    assert r.status == "failed" and "max_iterations=0" in r.error and b.calls == []


# ------------------------------------------------------------------------ review and streaming
@pytest.mark.parametrize("reply,status,drawn", [
    ("approve", "done", "a cat"),
    ({"action": "edit", "prompt": "a cat wearing a hat"}, "done", "a cat wearing a hat"),
    ("stop", "stopped", None),
    ("maybe", "failed", None),
])
def test_human_review(tmp_path, reply, status, drawn):
    agent, b = scripted_agent(tmp_path)
    r = agent.run("a cat", graph="draw_inspect_refine", claims=["cat"], human_review=True, thread_id="t1")
    assert r.status == "interrupted" and r.interrupt["prompt"] == "a cat" and r.interrupt["claims"] == ["cat"]
    assert b.calls == []
    r = agent.resume("t1", reply)
    assert r.status == status
    gens = [k for m, k in b.calls if m == "generate_image"]
    assert gens == ([drawn] if drawn else [])
    if status == "failed":
        assert "cannot use the reply 'maybe'" in r.error


def test_stream_has_node_updates_and_custom_events(tmp_path):
    agent, b = scripted_agent(tmp_path, replies={"understand": "yes"})
    parts = list(agent.stream("p", graph="draw_inspect_refine", claims=["a"]))
    result = parts[-1]["data"]
    assert parts[-1]["type"] == "result" and result.status == "done"
    nodes = [n for p in parts if p["type"] == "updates" for n in p["data"]]
    assert nodes == ["start", "claims", "draw", "inspect_claim", "judge", "finish"]
    custom = [p["data"]["type"] for p in parts if p["type"] == "custom"]
    assert custom.count("progress") == 4 and custom.count("image") == 1 and custom.count("verdict") == 1
    assert custom[-1] == "finished" and result.events[-1]["status"] == "done"


def test_every_graph_is_exported_and_compiles():
    import lladauni.agent.server_graphs as sg

    cfg = json.loads((__import__("pathlib").Path(__file__).parents[1] / "langgraph.json").read_text())
    assert sorted(cfg["graphs"]) == sorted(GRAPHS)
    for name in GRAPHS:
        assert getattr(sg, name).name == name
