"""Held out by construction: no held-out scene or phrasing frame ever enters a training stream, and the
evaluation draws only from the held-out part.

The training streams are the real ones: ``corpus.BatchBuilder`` (what the backbone stage trains on, with an
``encode`` that records every scene it is asked to render), ``tasks.sample_task`` (every scene a task shows
or names, ``Task.about``) and ``stages.training_scenes`` (the image tokenizer, VAE and decoder stages)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from lladauni.model_core.checkpoint import default_checkpoint
from lladauni.model_core.tokenizer import TextTokenizer
from lladauni.model_core.training import phrasing, shapes, tasks
from lladauni.model_core.training.corpus import BatchBuilder
from lladauni.model_core.training.shapes import COLORS, POSITIONS, SHAPES, Scene, Shape, ShapesWorld, scene_split
from lladauni.model_core.training.stages import training_scenes

N_TASKS = 4000


def _alt(words) -> str:
    return "(?:" + "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True)) + ")"


_POS = _alt([f"{p} {n}" for cell in POSITIONS for n in phrasing.POSITION_NOUNS[cell] for p in ("at the", "in the", "on the")])
_NOUN = _alt([n for cell in POSITIONS for n in phrasing.POSITION_NOUNS[cell]])
_NAME = f"(?:{_alt(COLORS)} {_alt(SHAPES)}|{_alt(SHAPES)} coloured {_alt(COLORS)})"
_REF = f"(?:{_NAME}(?: {_POS})?|{_alt(COLORS)} shape|shape {_POS}|{_alt(SHAPES)})"
_SLOTS = {"c": _alt(COLORS), "k": _alt(SHAPES), "p": _POS, "n": _NAME, "r": _REF, "w": _POS, "v": f"(?:{_NOUN}|{_alt(COLORS)})"}


def _frame_regex(frame: str) -> re.Pattern:
    """A held-out frame as a case-blind regex over text (its final punctuation optional)."""
    body = re.escape(frame.rstrip(".?!"))
    for name, pattern in _SLOTS.items():
        body = body.replace(re.escape("{" + name + "}"), pattern)
    return re.compile(body.replace("an?", "an?"), re.IGNORECASE)


def _held_out_frames() -> list[str]:
    groups = [phrasing.SHAPE_FORMS, phrasing.LEADS, phrasing.DESCRIBE_FRAMES, *phrasing.QUESTION_FRAMES.values(),
              *phrasing.EDIT_FRAMES.values()]
    return [f.text.strip() for g in groups for f in g if f.held_out]


def _articles(text: str) -> str:
    return re.sub(r"\b(an) (orange)\b", r"a \2", text, flags=re.IGNORECASE)


@pytest.fixture(scope="module")
def training_tasks() -> list:
    rng = np.random.default_rng(123)
    kinds = list(tasks.DEFAULT_MIX)
    return [tasks.sample_task(kinds[i % len(kinds)], rng) for i in range(N_TASKS)]


def test_the_split_is_a_fixed_fifth_of_the_scene_space():
    ones = [Scene((Shape(k, c, p),)) for p in POSITIONS for c in COLORS for k in SHAPES]
    held = [s for s in ones if scene_split(s) == "heldout"]
    assert 30 <= len(held) <= 60  # 49 of the 216 one-shape scenes
    # what is drawn (sizes, offsets, order) does not move a scene between the parts
    a = Scene((Shape("circle", "red", "top left", 0.5, 0.05, 0.0), Shape("square", "blue", "center")))
    b = Scene((Shape("square", "blue", "center", 0.7), Shape("circle", "red", "top left")))
    assert scene_split(a) == scene_split(b)
    rng = np.random.default_rng(0)
    share = np.mean([scene_split(shapes.sample_scene(rng)) == "heldout" for _ in range(3000)])
    assert 0.16 < share < 0.24


def test_no_training_task_shows_or_names_a_held_out_scene(training_tasks):
    scenes = [s for t in training_tasks for s in t.about]
    assert len(scenes) > N_TASKS  # every task carries its scenes (images and the scenes its texts name)
    assert all(t.about for t in training_tasks)
    assert [s for s in scenes if scene_split(s) == "heldout"] == []


def test_the_backbone_stream_renders_no_held_out_scene():
    tok = TextTokenizer.from_pretrained(default_checkpoint())
    seen: list[Scene] = []

    def encode(scenes):
        seen.extend(scenes)
        return torch.zeros(len(scenes), 9, dtype=torch.long)

    builder = BatchBuilder(tok, tok.image_code0, encode, 3, batch_size=64)
    for step in range(20):
        builder.sequences(np.random.default_rng(step), 64)
    assert len(seen) > 1000
    assert [s for s in seen if scene_split(s) == "heldout"] == []


def test_the_image_stages_draw_no_held_out_scene():
    scenes = training_scenes(np.random.default_rng(5), 3000)
    assert [s for s in scenes if scene_split(s) == "heldout"] == []


def test_evaluation_draws_only_held_out_scenes():
    exs = ShapesWorld(1000, split="heldout").examples(300)
    assert all(scene_split(e.scene) == "heldout" for e in exs)
    assert {len(e.scene) for e in exs} == {1, 2, 3}
    with pytest.raises(ValueError, match="split"):
        ShapesWorld(1, split="test")


def test_no_training_text_uses_a_held_out_frame(training_tasks):
    regexes = [(f, _frame_regex(f)) for f in _held_out_frames()]
    assert len(regexes) >= 15
    texts = [_articles(t.text) for t in training_tasks]
    hits = [(f, t) for f, r in regexes for t in texts if r.search(t)]
    assert hits == []


def test_held_out_texts_use_held_out_frames():
    """The check above can see a held-out frame: every held-out phrasing matches one."""
    rng = np.random.default_rng(9)
    regexes = [_frame_regex(f) for f in _held_out_frames()]
    texts = []
    for ex in ShapesWorld(2, split="heldout").examples(60):
        texts.append(phrasing.request_text(ex.scene, rng, "heldout"))
        texts += [phrasing.question_text(q, rng, "heldout") for q in ex.questions]
        texts += [phrasing.edit_text(e, rng, "heldout") for e in ex.edits]
        texts.append(phrasing.describe_text(rng, "heldout"))
    missed = [t for t in texts if not any(r.search(_articles(t)) for r in regexes)]
    assert missed == []
