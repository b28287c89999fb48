"""The bundled workflows on the embedded shapes model, and visual reasoning by sketching the steps.

Every bundled workflow either produces something meaningful on the embedded model (a caption that
parses, an edit the second caption shows, an answer that is a colour, a position or a number) or
is marked ``requires: full`` and refuses to start there, before any model call. ``split_steps``
and the ``visual_reasoning`` graph's ``sketch="steps"`` mode are checked on a fake backend: each
step goes to ``edit_image`` in order, on the previous sketch, and the final question to
``understand`` on the last one.

The floors of the embedded-model checks (``*_FLOOR``) sit below what the shipped model measured;
set them again from the figures when the embedded model is rebuilt.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from lladauni.agent import Agent, LocalBackend, ScriptedBackend, build_graph
from lladauni.agent.reasoning import split_steps
from lladauni.agent.workflows import bundled_workflows, load_workflow, run_workflow
from lladauni.agent.workflows.loader import FULL_MODEL_ONLY, model_problem
from lladauni.model_core.checkpoint import DEFAULT_CHECKPOINT_DIR
from lladauni.model_core.training import shapes as S
from lladauni.model_core.training.checker import try_read_scene

MEANINGFUL = {"draw-check-refine", "draw-inspect-refine-graph", "caption-then-edit", "visual-reasoning-sketch"}
FULL_ONLY = {"illustrated-story", "interleaved-story-graph", "multi-reference-edit", "plan-then-draw",
             "visual-math-sketch", "visual-reasoning-graph"}
# floors below the shipped (second-edition) model's counts on these cases: captions [4/4], edited captions [3/4],
# multi-step answers [4/6]; random weights get 0
CAPTION_FLOOR, EDIT_FLOOR, SKETCH_FLOOR = 3, 2, 3
ANSWER_WORDS = set(S.COLORS) | set(S.POSITIONS) | {str(n) for n in range(10)} | {"yes", "no"}


# ------------------------------------------------------------------------------ split_steps
@pytest.mark.parametrize("question,steps,final", [
    ("Move the red circle to the center. Then make the blue square green. What colour is the shape in the center?",
     ["Move the red circle to the center.", "Make the blue square green."], "What colour is the shape in the center?"),
    ("Move the red circle to the left and then make it blue; after that, remove the green square! Finally, how many "
     "shapes are there?", ["Move the red circle to the left.", "Make it blue.", "Remove the green square."],
     "How many shapes are there?"),
    ("Next, remove the red circle.   Then,  where is the blue square?", ["Remove the red circle."],
     "Where is the blue square?"),
    ("What color is the shape in the center?", [], "What color is the shape in the center?"),
    ("Move the red circle to the center.", [], "Move the red circle to the center."),  # no final question
    ("Is it red? Move it. What now?", [], "Is it red? Move it. What now?"),  # a question before the end
    ("Then. What is it?", [], "Then. What is it?"),  # nothing left of the step
])
def test_split_steps(question, steps, final):
    assert split_steps(question) == (steps, final)


def test_split_steps_refuses_a_non_string():
    with pytest.raises(TypeError, match="question must be a string, got int"):
        split_steps(3)


_INSTRUCTION = st.builds(lambda verb, c, k, rest: f"{verb} the {c} {k}{rest}", st.sampled_from(["Move", "Make", "Remove"]),
                         st.sampled_from(sorted(S.COLORS)), st.sampled_from(S.SHAPES),
                         st.sampled_from([" to the center", " green", "", " to the top left"]))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_INSTRUCTION, st.sampled_from(["", "Then ", "Next, ", "After that, ", "Finally "]),
                          st.sampled_from([". ", "! ", "; ", " and then "])), min_size=1, max_size=4),
       st.sampled_from(["Where is the red circle?", "How many shapes are there?"]))
def test_split_steps_recovers_the_steps_however_they_are_joined(parts, final):
    text = ""
    for i, (instruction, lead, end) in enumerate(parts):
        if not text.endswith("and then "):
            instruction = lead + (instruction if not lead else instruction[0].lower() + instruction[1:])
        text += instruction + (end if i + 1 < len(parts) else ". ")
    assert split_steps(text + final) == ([p[0] + "." for p in parts], final)


# ----------------------------------------------------------------- steps mode on a fake backend
def _forms(x) -> set:
    """What identifies an image handed to or returned by the fake backend: its first pixel, its codes."""
    out = set()
    image = x if isinstance(x, Image.Image) else getattr(x, "image", None)
    if image is not None:
        out.add(("px", image.convert("RGB").getpixel((0, 0))))
    if getattr(x, "codes", None) is not None and x.codes.numel():
        out.add(("codes", tuple(x.codes.flatten().tolist())))
    return out


class RecordingBackend(ScriptedBackend):
    """A ScriptedBackend that also records which image each edit and question was given."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.seen: list[tuple[str, str, set, set]] = []

    def edit_image(self, image, instruction, **kw):
        out = super().edit_image(image, instruction, **kw)
        self.seen.append(("edit_image", instruction, _forms(image), _forms(out)))
        return out

    def understand(self, image, question, **kw):
        self.seen.append(("understand", question, _forms(image), set()))
        return super().understand(image, question, **kw)


QUESTION = "Move the red circle to the center. Then make the blue square green. What color is the shape in the center?"
PICTURE = Image.new("RGB", (64, 64), (1, 2, 3))


@pytest.mark.parametrize("retokenize", ["roundtrip", "reuse"])
def test_steps_mode_edits_each_step_on_the_previous_sketch(tmp_path, retokenize):
    b = RecordingBackend(replies={"understand": "red"})
    r = Agent(b, runs_dir=tmp_path).run(QUESTION, images=[PICTURE], graph="visual_reasoning", sketch="steps",
                                        retokenize=retokenize)
    assert r.error is None and r.status == "done" and r.answer == "red"
    assert [(m, text) for m, text, _, _ in b.seen] == [
        ("edit_image", "Move the red circle to the center."), ("edit_image", "Make the blue square green."),
        ("understand", "What color is the shape in the center?")]
    first, second, look = b.seen
    assert ("px", (1, 2, 3)) in first[2]  # the first step edits the input picture
    assert second[2] & first[3] and look[2] & second[3]  # later ones, the previous sketch; the question, the last
    assert [m for m, _ in b.calls] == ["edit_image", "edit_image", "understand"]  # no chat: think is no model call
    events = [(e["node"], e["kind"], bool(e.get("image"))) for e in r.state["timeline"]]
    assert events == [("start", "text", False), ("think", "text", False), ("sketch", "image", True),
                      ("sketch", "image", True), ("observe", "text", True)]
    assert r.state["best"] == r.state["images"][-1]


def test_steps_mode_needs_a_starting_image_and_says_so(tmp_path):
    b = ScriptedBackend()
    r = Agent(b, runs_dir=tmp_path).run(QUESTION, graph="visual_reasoning", sketch="steps")
    assert r.status == "failed" and "needs a starting image" in r.error and "images=[...]" in r.error
    assert b.calls == []


def test_steps_mode_without_steps_asks_the_picture_and_with_too_many_refuses(tmp_path):
    b = RecordingBackend(replies={"understand": "blue"})
    r = Agent(b, runs_dir=tmp_path).run("What color is the square?", images=[PICTURE], graph="visual_reasoning",
                                        sketch="steps")
    assert r.answer == "blue" and [m for m, _ in b.calls] == ["understand"] and ("px", (1, 2, 3)) in b.seen[0][2]
    b = ScriptedBackend()
    r = Agent(b, runs_dir=tmp_path).run("Remove the a. Remove the b. Remove the c. Is it empty?", images=[PICTURE],
                                        graph="visual_reasoning", sketch="steps", max_iterations=2)
    assert r.status == "failed" and "has 3 steps but max_iterations=2" in r.error and b.calls == []


def test_sketch_option_names_the_steps_mode():
    with pytest.raises(ValueError, match="'auto', 'always', 'never' or 'steps'"):
        build_graph("visual_reasoning", sketch="step")


@pytest.mark.parametrize("question", [QUESTION, "Remove the red circle and then move the blue square to the top. "
                                                "Next, make it green. Where is the green square?",
                                      "What color is the shape in the center?"])
def test_the_sketch_workflow_makes_the_graphs_calls(tmp_path, question):
    gb, wb = ScriptedBackend(replies={"understand": "green"}), ScriptedBackend(replies={"understand": "green"})
    g = Agent(gb, runs_dir=tmp_path / "g").run(question, images=[PICTURE], graph="visual_reasoning", sketch="steps")
    w = run_workflow("visual-reasoning-sketch", {"question": question, "images": [PICTURE]}, wb, run_dir=tmp_path / "w")
    assert gb.calls == wb.calls and w.state["outputs"]["steps"] == split_steps(question)[0]
    assert (w.status, w.answer) == (g.status, g.answer) == ("done", "green")


def test_the_sketch_workflow_needs_a_starting_image(tmp_path):
    b = ScriptedBackend()
    r = run_workflow("visual-reasoning-sketch", {"question": QUESTION, "images": []}, b, run_dir=tmp_path / "w")
    assert r.status == "failed" and "visual-reasoning-sketch needs a starting image" in r.error and b.calls == []


# ----------------------------------------------------------------------- which model a run needs
def test_every_bundled_workflow_is_meaningful_on_the_embedded_model_or_says_it_needs_the_full_one():
    found = {n: load_workflow(p).spec.requires for n, p in bundled_workflows().items()}
    assert {n for n, r in found.items() if r == "any"} == MEANINGFUL
    assert {n for n, r in found.items() if r == "full"} == FULL_ONLY


def test_which_backends_declare_a_closed_world(tmp_path):
    """``LocalBackend.world`` reads the world from the model or its folder and loads nothing: the embedded default
    (named or not) and any folder whose lladauni.json says "shapes" are the shapes world; a folder without one, a
    repo id and a scripted backend are open-world (``requires: full`` workflows run there)."""
    assert LocalBackend().world == "shapes" and LocalBackend(DEFAULT_CHECKPOINT_DIR).world == "shapes"
    assert LocalBackend(tmp_path).world is None and LocalBackend("org/some-repo").world is None
    assert getattr(ScriptedBackend(), "world", None) is None
    built = tmp_path / "built"
    built.mkdir()
    (built / "lladauni.json").write_text('{"world": "shapes"}', encoding="utf-8")
    assert LocalBackend(built).world == "shapes" and not LocalBackend(built).loaded

    class Loaded:  # a model loaded from the embedded checkpoint, wrapped without naming it
        checkpoint_dir = DEFAULT_CHECKPOINT_DIR

    class OpenWorld:  # a loaded model answers itself
        world = None
        checkpoint_dir = DEFAULT_CHECKPOINT_DIR

    assert LocalBackend(model=Loaded()).world == "shapes" and LocalBackend(model=object()).world is None
    assert LocalBackend(model=OpenWorld()).world is None
    wf = load_workflow(bundled_workflows()[sorted(FULL_ONLY)[0]])
    assert model_problem(wf, LocalBackend(built)) is not None and model_problem(wf, LocalBackend(tmp_path)) is None


# --------------------------------------------------------------------- on the embedded model
@pytest.fixture(scope="module")
def embedded():
    b = LocalBackend(None, device="cpu")
    b.load()
    return b


@pytest.mark.parametrize("name", sorted(FULL_ONLY))
def test_a_full_model_workflow_refuses_the_embedded_model_before_any_call(name, embedded, tmp_path):
    calls = sum(embedded.calls.values())
    r = run_workflow(name, _full_inputs(name, tmp_path), embedded, run_dir=tmp_path / "run")
    assert r.status == "failed" and r.error == FULL_MODEL_ONLY.format(name=name)
    assert r.error.startswith(f"workflow {name!r} needs the full LLaDA2.0-Uni model; a shapes-world model (the embedded default) cannot ")
    assert sum(embedded.calls.values()) == calls and r.report_path.is_file()


def _full_inputs(name: str, tmp_path) -> dict:
    p = tmp_path / "in.png"
    PICTURE.save(p)
    return {"illustrated-story": {"prompt": "a fox"}, "interleaved-story-graph": {"prompt": "a fox"},
            "multi-reference-edit": {"references": [str(p), str(p)], "instruction": "merge"},
            "plan-then-draw": {"prompt": "a fox"}, "visual-math-sketch": {"figure": str(p), "question": "x?"},
            "visual-reasoning-graph": {"question": "x?"}}[name]


SCENES = [S.Scene((S.Shape("circle", "red", "top left"), S.Shape("square", "blue", "bottom right"))),
          S.Scene((S.Shape("triangle", "green", "top"), S.Shape("diamond", "yellow", "left"))),
          S.Scene((S.Shape("square", "purple", "center"),)),
          S.Scene((S.Shape("diamond", "orange", "top right"), S.Shape("circle", "blue", "bottom"),
                   S.Shape("triangle", "red", "bottom left")))]
EDITS = ["Make the blue square green.", "Move the yellow diamond to the right.", "Add a red circle at the top left.",
         "Remove the blue circle."]


def test_caption_then_edit_describes_the_picture_and_the_edit(embedded, tmp_path):
    captions = edits = 0
    for i, (scene, goal) in enumerate(zip(SCENES, EDITS)):
        r = run_workflow("caption-then-edit", {"image": S.render(scene, 96), "goal": goal}, embedded,
                         run_dir=tmp_path / str(i))
        out = r.state["outputs"]
        assert r.status == "done" and out["instruction"] == goal and isinstance(out["changed"], bool)
        captions += _signature(out["caption"]) == _signature(S.caption(scene))
        target = _edited(scene, goal)
        edits += _signature(out["edited_caption"]) == _signature(S.caption(target))
    assert captions >= CAPTION_FLOOR and edits >= EDIT_FLOOR, (captions, edits)


def _signature(caption: str):
    try:
        return sorted(s.key() for s in S.parse_caption(caption).shapes)
    except ValueError:
        return None


def _edited(scene: S.Scene, goal: str) -> S.Scene:
    """The scene after one of ``EDITS`` (what the second caption should say)."""
    words = goal.rstrip(".").split()
    if words[0] == "Add":
        return scene.with_shapes((*scene.shapes, S.Shape(words[3], words[2], " ".join(words[6:]))))
    hit = next(s for s in scene.shapes if s.name == " ".join(words[2:4]))
    rest = tuple(s for s in scene.shapes if s is not hit)
    if words[0] == "Remove":
        return scene.with_shapes(rest)
    changed = S.Shape(hit.kind, words[4], hit.position) if words[0] == "Make" else \
        S.Shape(hit.kind, hit.color, " ".join(words[6:]))
    return scene.with_shapes((*rest, changed))


def _multi_step_case(seed: int) -> tuple[S.Scene, str, str]:
    """A held-out scene, two or three moves, recolourings or removals, and a question about the result
    whose answer the steps changed when one such question exists: (scene, question, answer)."""
    rng = np.random.default_rng(seed)
    scene = S.sample_scene(rng, 2, 3, split="heldout")
    now, steps = scene, []
    while len(steps) < 2 + seed % 2:
        e = S.make_edit(now, ("move", "recolor", "remove")[int(rng.integers(3))], rng)
        if e is not None:
            now, steps = e.target, steps + [e.instruction]
    asked = [q for q in S.questions(now, rng) if q.kind in ("count", "color", "position")]
    before = {q.question: q.answer for q in S.questions(scene, np.random.default_rng(0))}
    changed = [q for q in asked if before.get(q.question) != q.answer] or asked
    qa = changed[int(rng.integers(len(changed)))]
    text = " ".join([steps[0]] + [f"Then {s[0].lower()}{s[1:]}" for s in steps[1:]])
    return scene, f"{text} {qa.question}", qa.answer


def test_visual_reasoning_sketch_answers_multi_step_questions(embedded, tmp_path):
    right = 0
    for seed in range(6):
        scene, question, answer = _multi_step_case(seed)
        r = run_workflow("visual-reasoning-sketch", {"question": question, "images": [S.render(scene, 96)]}, embedded,
                         run_dir=tmp_path / str(seed))
        got = r.state["outputs"]["answer"].strip().rstrip(".").lower()
        assert r.status == "done" and got in ANSWER_WORDS, (question, got)
        assert len(r.state["outputs"]["steps"]) == 2 + seed % 2
        right += got == answer
    assert right >= SKETCH_FLOOR, right


def test_the_steps_graph_answers_on_the_embedded_model(embedded, tmp_path):
    scene, question, answer = _multi_step_case(1)
    r = Agent(embedded, runs_dir=tmp_path).run(question, images=[S.render(scene, 96)], graph="visual_reasoning",
                                               sketch="steps")
    assert r.status == "done" and r.answer.strip().rstrip(".").lower() in ANSWER_WORDS
    assert [e["node"] for e in r.state["timeline"] if e.get("image")] == ["sketch"] * 3 + ["observe"]


@pytest.mark.parametrize("name", ["draw-check-refine", "draw-inspect-refine-graph"])
def test_the_drawing_loops_draw_shapes_and_give_verdicts(name, embedded, tmp_path):
    prompt = "a red circle at the top left and a blue square in the center"
    r = run_workflow(name, {"prompt": prompt, "max_rounds": 2}, embedded, run_dir=tmp_path / "run")
    out = r.state["outputs"]
    assert r.status in ("done", "capped") and r.error is None
    with Image.open(r.run_dir / out["image"]["png"]) as im:
        found = try_read_scene(im.convert("RGB"))
    assert found is not None and len(found.shapes) >= 1
    verdicts = [e["data"]["verdict"] for e in r.state["timeline"] if e["kind"] == "verdict"]
    assert verdicts and all(v in (True, False) for v in verdicts)
    if name == "draw-check-refine":
        assert out["passed"] in (True, False)
    else:
        assert 0.0 <= out["score"] <= 1.0
