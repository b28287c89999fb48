"""The grammar of phrasings (model_core/training/phrasing.py): every phrasing it makes reads back to what it
was made from, held-out frames are drawn only for the held-out split, and requests outside the world are told
apart from requests inside it."""

from __future__ import annotations

import numpy as np
import pytest

from lladauni.model_core.training import phrasing, puzzles, shapes
from lladauni.model_core.training.shapes import Scene, Shape, ShapesWorld


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_request_reads_back_to_its_scene(split):
    rng = np.random.default_rng(4)
    for _ in range(1500):
        scene = shapes.sample_scene(rng)
        text = phrasing.request_text(scene, rng, split)
        got = phrasing.parse_request(text)
        assert got is not None and got.signature() == scene.signature(), text


@pytest.mark.parametrize("text, expected", [
    ("a red circle at the top left and a blue square in the center", [("top left", "red", "circle"), ("center", "blue", "square")]),
    ("Draw a circle coloured red in the upper-left corner.", [("top left", "red", "circle")]),
    ("IN THE MIDDLE A GREEN DIAMOND; a purple triangle at the bottom-right", [("center", "green", "diamond"),
                                                                          ("bottom right", "purple", "triangle")]),
    ("Paint an orange square on the left side with a yellow circle at the top centre",
     [("top", "yellow", "circle"), ("left", "orange", "square")]),
])
def test_parse_request_reads_the_issue_paraphrases(text, expected):
    assert phrasing.parse_request(text).signature() == tuple(expected)


@pytest.mark.parametrize("text", ["a red circle", "a red circle at the top left and a red square in the center",
                                  "a red circle at the top left and a blue square at the top left", "hello", ""])
def test_parse_request_refuses_what_is_not_a_scene(text):
    assert phrasing.parse_request(text) is None


def test_questions_edits_and_descriptions_take_frames_of_their_split():
    ex = ShapesWorld(3, split="heldout")[0]
    held = {f.text for frames in phrasing.QUESTION_FRAMES.values() for f in frames if f.held_out}
    train = {f.text for frames in phrasing.QUESTION_FRAMES.values() for f in frames if not f.held_out}
    assert held and train and not held & train
    rng = np.random.default_rng(0)
    # every frame of a split is drawn, and only those
    seen = {"train": set(), "heldout": set()}
    for split in seen:
        for _ in range(400):
            for qa in ex.questions:
                frames = phrasing.QUESTION_FRAMES[qa.intent[0]]
                seen[split].add(phrasing.pick_frame(frames, rng, split).text)
    assert seen["train"] == train and seen["heldout"] == held
    with pytest.raises(ValueError, match="split"):
        phrasing.question_text(ex.questions[0], rng, "test")


def _in_both_splits(world_seed: int, n: int):
    """(example, split) for the first ``n`` examples of ``ShapesWorld(world_seed)`` and each phrasing split."""
    for ex in ShapesWorld(world_seed).examples(n):
        for split in ("train", "heldout"):
            yield ex, split


def test_rephrased_questions_keep_their_subject():
    """The colour, kind and cell a question names survive rephrasing (so the canonical answer still holds)."""
    rng = np.random.default_rng(1)
    for ex, split in _in_both_splits(8, 80):
        for qa in ex.questions:
            text = phrasing.question_text(qa, rng, split).lower()
            for word in qa.intent[1:]:
                if word in shapes.POSITIONS:
                    assert phrasing.parse_position(text) == word, (qa.intent, text)
                else:
                    assert word in text, (qa.intent, text)


def test_edit_texts_name_the_shape_and_the_change():
    rng = np.random.default_rng(2)
    for ex, split in _in_both_splits(9, 60):
        for e in ex.edits:
            t = phrasing.edit_text(e, rng, split).lower()
            assert e.shape.kind in t or e.shape.color in t or "shape" in t, t
            if e.kind == "recolor":
                assert e.value in t
    # a kind alone names the shape only when no other shape has that kind
    two = Scene((Shape("circle", "red", "top left"), Shape("circle", "blue", "center")))
    for _ in range(50):
        ref = phrasing.shape_reference(two.shapes[0], two, rng)
        assert ref != "circle"


@pytest.mark.parametrize("text", ["a cat", "a black hexagon", "ten red circles", "two red circles", "a sunset over the sea",
                                  "Draw 4 squares", "a pink circle at the top left", "a red circle and a red square",
                                  "A red circle at the top left, plus a circle coloured red on the right.",
                                  "a red circle in the centre and a blue square in the middle"])
def test_requests_outside_the_world_are_named(text):
    reason = phrasing.scope_problem(text)
    assert reason is not None and reason.endswith(phrasing.world_summary())


def test_requests_inside_the_world_pass_the_scope_check():
    rng = np.random.default_rng(3)
    for ex, split in _in_both_splits(5, 200):
        assert phrasing.scope_problem(phrasing.request_text(ex.scene, rng, split)) is None
        for e in ex.edits:
            assert phrasing.scope_problem(phrasing.edit_text(e, rng, split), edit=True) is None
    assert phrasing.scope_problem("make it blue", edit=True) is None
    assert phrasing.scope_problem("make it black", edit=True) is not None
    # one clause naming two shapes is not judged; an edit may name a colour twice
    assert phrasing.scope_problem("a red circle to the left of a blue square") is None
    assert phrasing.scope_problem("make the red circle red", edit=True) is None


def test_puzzles_are_exact_and_hang_on_their_steps():
    for i in range(200):
        p = puzzles.make_puzzle(puzzles.puzzle_rng(11, i))
        assert shapes.scene_split(p.source) == "heldout" and len(p.source) >= 2
        assert 2 <= len(p.steps) <= 3 and p.text.endswith("?")
        scene = p.source
        for e in p.steps:  # each step acts on what the previous one left
            assert e.source.signature() == scene.signature()
            scene = e.target
        qa = p.question
        what = qa.intent[0]
        if what == "count_all":
            assert qa.answer == str(len(scene))
        elif what == "color_at":
            assert qa.answer == scene.at(qa.intent[1]).color
        elif what == "where":
            assert scene.find(qa.intent[1], qa.intent[2])[0].position == qa.answer
        else:
            assert qa.answer == ("yes" if scene.find(*qa.intent[1:]) else "no")
