"""Every bundled workflow compiles and runs: on the tiny checkpoint (CPU, tiny sizes), except
multi-reference-edit, which edits two reference grids and runs through the ScriptedBackend
(the real model takes ~14 s there on 2 cores). The tiny checkpoint is not the embedded shapes
model, so workflows marked ``requires: full`` run on it too (tests/test_workflows_embedded.py
checks them on the embedded model)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lladauni.agent import Agent, ScriptedBackend
from lladauni.agent.context import TINY_OPTIONS
from lladauni.agent.workflows import compile_workflow, load_workflow, loads_workflow, run_workflow

from .agent_fixtures import tiny_backend  # noqa: F401 - fixture

TINY = dict(text_options=TINY_OPTIONS["text"], image_options=TINY_OPTIONS["image"], edit_options=TINY_OPTIONS["edit"],
            interleaved_options=TINY_OPTIONS["interleaved"])


@pytest.fixture
def pictures(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        p = tmp_path / f"in{i}.png"
        Image.new("RGB", (256, 256), colour).save(p)
        paths.append(str(p))
    return paths


def _inputs(name, pictures):
    return {"draw-check-refine": {"prompt": "a red fox", "max_rounds": 2},
            "caption-then-edit": {"image": pictures[0], "goal": "make it blue"},
            "visual-math-sketch": {"figure": pictures[0], "question": "what is x?"},
            "multi-reference-edit": {"references": pictures, "instruction": "merge them", "decoder_steps": 2},
            "illustrated-story": {"prompt": "a fox", "frames": 2},
            "visual-reasoning-sketch": {"question": "Move the red circle to the center. Then make it blue. Where is it?",
                                        "images": pictures[:1]}}[name]


@pytest.mark.parametrize("name", ["draw-check-refine", "caption-then-edit", "visual-math-sketch", "illustrated-story",
                                  "visual-reasoning-sketch"])
def test_bundled_workflow_runs_on_the_tiny_checkpoint(name, tiny_backend, tmp_path, pictures):  # noqa: F811
    assert tiny_backend.world is None  # requires: full workflows run here
    wf = load_workflow(name)
    compile_workflow(wf)
    r = run_workflow(wf, _inputs(name, pictures), tiny_backend, run_dir=tmp_path / "run", **TINY)
    assert r.status in ("done", "capped"), r.error
    assert r.error is None
    assert set(r.state["outputs"]) == set(wf.spec.outputs)
    trace = json.loads(r.trace_path.read_text())
    assert trace["state"]["graph"] == name and r.report_path.read_text().startswith("<!doctype html>")
    for ref in r.state["images"]:
        assert (r.run_dir / ref["png"]).is_file()
        with Image.open(r.run_dir / ref["png"]) as im:
            assert min(im.size) >= 256  # tiny sizes (edits keep the editing preprocessing's size)


def test_multi_reference_edit_runs_scripted(tmp_path, pictures):
    b = ScriptedBackend(replies={"understand": '{"pass": true, "missing": ""}'})
    r = run_workflow("multi-reference-edit", _inputs("multi-reference-edit", pictures), b, run_dir=tmp_path / "run")
    assert r.status == "done" and r.state["outputs"]["passed"] is True
    assert [m for m, _ in b.calls] == ["edit_image", "decode_image", "understand"]


def test_draw_check_refine_loop_is_capped_and_stops_when_the_check_passes(tmp_path):
    no = ScriptedBackend(replies={"understand": "no, the fox is missing"})
    r = run_workflow("draw-check-refine", {"prompt": "a fox", "max_rounds": "3"}, no, run_dir=tmp_path / "a")
    assert r.status == "capped" and [m for m, _ in no.calls].count("edit_image") == 3
    assert r.state["loops"]["refine"] == {"iteration": 3, "max": 3, "capped": True, "next": "exit"}
    later = ScriptedBackend(replies={"understand": ["no", "no", "yes"]})
    r = run_workflow("draw-check-refine", {"prompt": "a fox"}, later, run_dir=tmp_path / "b")
    assert r.status == "done" and [m for m, _ in later.calls].count("edit_image") == 2
    assert r.state["outputs"]["passed"] is True
    first = ScriptedBackend(replies={"understand": "yes"})
    r = run_workflow("draw-check-refine", {"prompt": "a fox"}, first, run_dir=tmp_path / "c")
    assert [m for m, _ in first.calls] == ["generate_image", "understand"] and r.state["nodes"]["good_enough"]["route"] == "END"


def test_bad_inputs_and_failures_are_readable(tmp_path):
    b = ScriptedBackend()
    with pytest.raises(ValueError, match="unknown input 'promt'"):
        run_workflow("draw-check-refine", {"promt": "x"}, b, run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"input 'prompt' \(string\) is required"):  # refused before anything runs
        run_workflow("draw-check-refine", {}, b, run_dir=tmp_path / "b")
    assert not (tmp_path / "b" / "run.json").exists() and b.calls == []
    failing = ScriptedBackend(fail_on={"generate_image": 1})
    r = run_workflow("draw-check-refine", {"prompt": "x"}, failing, run_dir=tmp_path / "c")
    assert r.status == "failed" and r.error.startswith("draw failed: BackendError") and r.report_path.is_file()


def test_call_node_router_and_agent_integration(tmp_path):
    text = """\
version: 1
name: shout
inputs: {word: {type: string}}
nodes:
  loud: {kind: call, function: shout, args: {text: inputs.word, times: 2}}
  pick:
    kind: router
    routes: [{when: "nodes.loud.value | length > 6", to: long}]
    default: END
  long: {kind: think, prompt: "Say {{ nodes.loud.value }}"}
edges: [[START, loud], [loud, pick], [long, END]]
outputs: {value: nodes.loud.value, reply: "{{ nodes.long.text if nodes.long is defined else '' }}"}
"""
    wf = loads_workflow(text, functions={"shout": lambda text, times: (text.upper() + "!") * times})
    agent = Agent(ScriptedBackend(replies={"chat": "HEYHEY"}), runs_dir=tmp_path / "runs")
    r = run_workflow(wf, {"word": "hey"}, agent=agent, thread_id="t1")
    assert r.state["outputs"] == {"value": "HEY!HEY!", "reply": "HEYHEY"} and r.run_dir == tmp_path / "runs" / "t1"
    r = run_workflow(wf, {"word": "a"}, agent=agent, thread_id="t2")
    assert r.state["outputs"] == {"value": "A!A!", "reply": ""} and r.state["nodes"]["pick"]["route"] == "END"


def test_sqlite_checkpoint_resume_skips_finished_nodes(tmp_path):
    from lladauni.agent.workflows import resume_workflow

    db = tmp_path / "state.sqlite"
    b = ScriptedBackend(fail_on={"edit_image": 1}, replies={"understand": "no"})
    r = run_workflow("draw-check-refine", {"prompt": "a fox", "max_rounds": 1}, b, run_dir=tmp_path / "run", checkpoint=db)
    assert r.status == "failed"
    r2 = resume_workflow(tmp_path / "run", ScriptedBackend(), checkpoint=db)
    assert r2.status == "failed"  # a failed run is final: its error is state, not a crash
    # a crash (an exception escaping the graph) resumes at the unfinished node
    crash = ScriptedBackend(replies={"understand": "no"})
    crash.understand = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_workflow("draw-check-refine", {"prompt": "a fox", "max_rounds": 1}, crash, run_dir=tmp_path / "run2", checkpoint=db)
    again = ScriptedBackend(replies={"understand": "yes"})
    r3 = resume_workflow(tmp_path / "run2", again, checkpoint=db)
    assert r3.status == "done" and [m for m, _ in again.calls] == ["understand"]


def test_each_loop_pass_draws_with_a_seed_of_its_own(tmp_path):
    """The first fix must not reuse the draw's seed: an edit that yields the draw's codes would decode to
    the very image that failed the check."""
    seeds: list[tuple[str, object]] = []

    class Spy(ScriptedBackend):
        def generate_image(self, prompt, *, seed=None, **kw):
            seeds.append(("draw", seed))
            return super().generate_image(prompt, seed=seed, **kw)

        def edit_image(self, image, instruction, *, seed=None, **kw):
            seeds.append(("fix", seed))
            return super().edit_image(image, instruction, seed=seed, **kw)

    r = run_workflow("draw-check-refine", {"prompt": "a fox", "max_rounds": 3}, Spy(replies={"understand": "no"}),
                     run_dir=tmp_path / "run", seed=7)
    assert r.status == "capped"
    assert seeds == [("draw", 7), ("fix", 8), ("fix", 9), ("fix", 10)]
