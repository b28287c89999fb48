"""What the shapes model is taught to do: every prompt and answer format, in one place.

The tiny shapes model is trained on the same prompts the library sends at inference
(``model_core.generation.prompts.PromptBuilder``) and on the exact question and instruction texts of
the bundled ``workflows/draw-check-refine.yaml`` and of the agent graph's claim/inspect prompts, so
the demo workflow and the agent loop run on it in-distribution. This module holds the formats and
the structured targets; ``corpus.py`` turns them into token sequences.

Task kinds (``TASKS``):

* ``t2i``: caption -> image (codes of the rendered scene).
* ``t2i_thinking``: caption -> a plan (:func:`shapes.plan`) -> image.
* ``caption``: image + "Describe the image." -> caption.
* ``qa``: image + a count / colour / position / presence question -> short answer.
* ``verify``: image + "Does this image show: "<caption>"? ..." -> "yes" or "no, <what is wrong>".
* ``claim``: image + the agent's inspect prompt about one shape -> "yes, ..." or "no, ...".
* ``claims``: the agent's claims prompt (text only) -> one shape per line.
* ``edit``: image + recolour / move / add / remove instruction -> edited image.
* ``fix``: image of a flawed scene + "Change the image so that it shows: <caption>. <feedback>" ->
  the requested scene (the refine step of the demo workflow). With ``TaskOptions.fix_correct`` some
  items show an already-right image and a wrong complaint; the target is that image unchanged.

Imports only numpy (through ``shapes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import numpy as np

from . import phrasing
from .shapes import (
    COLORS,
    COUNT_KIND_QUESTION,
    MAX_SHAPES,
    POSITIONS,
    SHAPES,
    Scene,
    QA,
    Shape,
    caption,
    join_phrases,
    make_edit,
    plan,
    position_phrase,
    questions,
    sample_scene,
    sample_shape,
    scene_split,
)

__all__ = [
    "CHECK_QUESTION",
    "CLAIMS_PROMPT",
    "DESCRIBE_QUESTION",
    "FIX_INSTRUCTION",
    "INSPECT_PROMPT",
    "RECHECK_QUESTION",
    "TASKS",
    "Task",
    "TaskOptions",
    "corrupt_scene",
    "fix_instruction",
    "mismatch_answer",
    "mismatches",
    "sample_task",
    "verify_answer",
]

# The check and recheck questions of workflows/draw-check-refine.yaml, as its folded (>-) scalars render.
CHECK_QUESTION = 'Does this image show: "{prompt}"? Answer yes or no first, then name what is wrong or missing.'
RECHECK_QUESTION = 'Does this image show: "{prompt}"? Answer yes or no first, then name what is wrong.'
# The fix instruction of the same workflow: the request, then the last check's answer.
FIX_INSTRUCTION = "Change the image so that it shows: {prompt}. {feedback}"
DESCRIBE_QUESTION = "Describe the image."
# lladauni_agent.prompts.INSPECT and CLAIMS (a test pins them equal).
INSPECT_PROMPT = (
    'Look at the image. Is this statement true of it: "{claim}"? '
    "Answer yes or no first, then give one short reason."
)
CLAIMS_PROMPT = (
    "List the separate facts that an image made for the following request must show. "
    "Write one short statement per line that can be checked by looking at the image.\n"
    "Request: {prompt}"
)

TASKS: tuple[str, ...] = ("t2i", "t2i_thinking", "caption", "qa", "verify", "claim", "claims", "edit", "fix")


@dataclass(frozen=True)
class Task:
    """One training (or evaluation) item in structured form.

    ``kind`` is one of :data:`TASKS`. ``source`` is the input scene (image tasks), ``target`` the
    scene to draw (image outputs), ``text`` the user text (caption, question or instruction) and
    ``answer`` the text the model writes (for ``t2i_thinking``: the plan).
    """

    kind: str
    text: str
    answer: str = ""
    source: Optional[Scene] = None
    target: Optional[Scene] = None
    about: tuple = ()
    """Every scene the task shows or names (images, requests, corrupted drawings): what the held-out split
    keeps out of training."""


# ----------------------------------------------------------------------------------------------------------
# Comparing a scene with a request
# ----------------------------------------------------------------------------------------------------------


def mismatches(expected: Scene, found: Scene) -> list[str]:
    """What is wrong with ``found`` for a request of ``expected``, cell by cell in reading order."""
    out: list[str] = []
    for pos in POSITIONS:
        e, f = expected.at(pos), found.at(pos)
        if e is None and f is None:
            continue
        if f is None:
            out.append(f"the {e.name} {position_phrase(pos)} is missing")
        elif e is None:
            out.append(f"there is an extra {f.name} {position_phrase(pos)}")
        elif e.key() != f.key():
            out.append(f"the shape {position_phrase(pos)} is a {f.name}, not a {e.name}")
    return out


def mismatch_answer(problems: list[str]) -> str:
    """'yes' when nothing is wrong, else 'no, <problem>; <problem>.'"""
    return "yes" if not problems else "no, " + "; ".join(problems) + "."


def verify_answer(expected: Scene, found: Scene) -> str:
    """The answer to :data:`CHECK_QUESTION` about an image of ``found`` for a request of ``expected``."""
    return mismatch_answer(mismatches(expected, found))


def fix_instruction(prompt: str, feedback: str) -> str:
    return FIX_INSTRUCTION.format(prompt=prompt, feedback=feedback)


def corrupt_scene(scene: Scene, rng: np.random.Generator, max_errors: int = 2) -> Scene:
    """A flawed drawing of ``scene``: one or two errors (wrong colour, wrong kind, a shape missing,
    an extra shape, a shape in the wrong cell), the kinds of mistakes a drawing model makes."""
    shapes = list(scene.shapes)
    n_err = int(rng.integers(1, max_errors + 1))
    for _ in range(n_err):
        kinds = ["color", "kind"] if shapes else []
        if len(shapes) > 1:
            kinds.append("drop")
        if len(shapes) < MAX_SHAPES:
            kinds += ["extra", "move"] if shapes else ["extra"]
        if not kinds:
            break
        k = kinds[int(rng.integers(len(kinds)))]
        used = {s.position for s in shapes}
        free = [p for p in POSITIONS if p not in used]
        if k == "extra" and free:
            colors = [c for c in COLORS if c not in {s.color for s in shapes}] or list(COLORS)
            shapes.append(sample_shape(rng, SHAPES[int(rng.integers(len(SHAPES)))],
                                        colors[int(rng.integers(len(colors)))], free[int(rng.integers(len(free)))]))
            continue
        if not shapes:
            continue
        i = int(rng.integers(len(shapes)))
        s = shapes[i]
        if k == "color":
            others = [c for c in COLORS if c != s.color]
            shapes[i] = replace(s, color=others[int(rng.integers(len(others)))])
        elif k == "kind":
            others = [x for x in SHAPES if x != s.kind]
            shapes[i] = replace(s, kind=others[int(rng.integers(len(others)))])
        elif k == "drop":
            shapes.pop(i)
        elif k == "move" and free:
            shapes[i] = replace(s, position=free[int(rng.integers(len(free)))])
    out = Scene(tuple(shapes))
    return out if out.signature() != scene.signature() else corrupt_scene(scene, rng, max_errors)


# ----------------------------------------------------------------------------------------------------------
# Sampling tasks
# ----------------------------------------------------------------------------------------------------------

# How often each task is drawn in training (relative weights). Reading tasks (caption, qa, verify, claim) get
# more than half: the backbone learns to write images sooner than to read them. Thinking items are long (a plan
# of tens of tokens besides the image), so under the token loss their weight takes more of the gradient than its
# share of rows. The first retraining of 2026-12-05 ran t2i_thinking 1.2 and claims 0.5 and read images badly even
# in canonical wording (67% of questions on held-out scenes, presence at chance, against 93% for the first
# edition); back at the first edition's 0.5 and 0.3 the second edition still answered presence ("yes" to everything)
# and position questions at chance, so the mix was not the cause: the grammar's phrasings from the first step were
# (corpus.phrasing_ramp).
DEFAULT_MIX: dict[str, float] = {
    "t2i": 2.5,
    "t2i_thinking": 0.5,
    "caption": 2.5,
    "qa": 4.0,
    "verify": 3.0,
    "claim": 0.8,
    "claims": 0.3,
    "edit": 2.5,
    "fix": 2.0,
}


_COUNTED_KIND: dict[str, str] = {COUNT_KIND_QUESTION.format(kind=k): k for k in SHAPES}

SHAPE_QUESTION = "What shape is {where}?"
"""A training-only question (``TaskOptions.shape_questions``): the kind of the shape in a cell."""


def _claim_answer(scene: Scene, claim: Shape) -> str:
    pos = claim.position
    there = scene.at(pos)
    if there is not None and there.key() == claim.key():
        return f"yes, there is {claim.describe()}."
    if there is None:
        return f"no, the {claim.name} {position_phrase(pos)} is missing."
    return f"no, the shape {position_phrase(pos)} is a {there.name}."


@dataclass(frozen=True)
class TaskOptions:
    """How some task kinds are drawn (the defaults draw as the first releases did).

    ``qa_kinds``: relative weights of the question kinds (count, color, position, presence); empty: even.
    ``fix_correct``: the share of ``fix`` items whose image already shows the request; the feedback is
    then a wrong complaint (what a mistaken check says) or empty, and the target is the image unchanged.
    A check that wrongly says "no" then costs a redraw, not a broken image.
    ``count_present``: the share of "How many <kind>s" items asked about a kind the scene holds. Drawn
    from all kinds, about 58% of them are answered "0" (a kind is absent from a 1-3 shape scene more often
    than not), which teaches a prior towards "0" that outweighs a lone shape of that kind.
    ``count_list``: the share of "How many <kind>s" answers that go on to list the shapes counted
    ("2: a red circle at the top left and a blue circle in the center."), so the count is learned with
    the shapes it counts in view; an answer's head (what the benchmark reads) is still the number.
    ``shape_questions``: the share of colour questions replaced by "What shape is <at a cell>?" (answer:
    the kind alone). Colour questions teach what colour a code is; nothing else asks for the kind alone,
    which counting one kind needs.
    Measured once each (10,000 backbone steps, 1,800 held-out questions; README, embedded default model):
    count_present alone taught a prior from the number of shapes; with count_list 1.0 and
    shape_questions 0.3 count questions rose from 84% to 94% but captions fell from 98% to 86%, and
    shape_questions without count_list also cost captions (84%). None is in the shipped recipe.
    ``phrasing``: a factor on every share of grammar phrasings (``phrasing``) among the texts; 0 draws only the
    canonical texts. The backbone's schedule raises it from 0 to 1 (``corpus.phrasing_ramp``).
    """

    qa_kinds: dict = field(default_factory=dict)
    fix_correct: float = 0.0
    count_present: float = 0.0
    count_list: float = 0.0
    shape_questions: float = 0.0
    phrasing: float = 1.0

    def __post_init__(self) -> None:
        kinds = ("count", "color", "position", "presence")
        bad = set(self.qa_kinds) - set(kinds)
        if bad or any(not (isinstance(v, (int, float)) and v >= 0) for v in self.qa_kinds.values()):
            raise ValueError(f"qa_kinds={self.qa_kinds!r}: weights >= 0 for {', '.join(kinds)}")
        if self.qa_kinds and not any(self.qa_kinds.values()):
            raise ValueError("qa_kinds: at least one weight must be positive")
        for name in ("fix_correct", "count_present", "count_list", "shape_questions", "phrasing"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}={value!r}: must be a probability in [0, 1]")

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "TaskOptions":
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown task options {sorted(unknown)}; expected {', '.join(known)}")
        return cls(**data)


def _pick_question_kind(kinds: list[str], weights: dict, rng: np.random.Generator) -> str:
    if not weights:
        return kinds[int(rng.integers(len(kinds)))]
    w = np.array([float(weights.get(k, 0.0)) for k in kinds])
    if w.sum() <= 0:  # a scene whose kinds all weigh 0 (an empty canvas asked only counts / presence)
        return kinds[int(rng.integers(len(kinds)))]
    return kinds[int(rng.choice(len(kinds), p=w / w.sum()))]


def sample_task(kind: str, rng: np.random.Generator, options: Optional[TaskOptions] = None,
                split: Optional[str] = "train") -> Task:
    """A random task of the given kind whose every scene (``Task.about``) lies in ``split`` (None: any scene);
    its texts are phrased by the grammar (``phrasing``) in that split's frames, or canonically."""
    options = options or TaskOptions()
    if kind not in TASKS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(TASKS)}")
    while True:
        task = _draw_task(kind, rng, options, split)
        if split is None or all(not s.shapes or scene_split(s) == split for s in task.about):
            return task


# How often each kind of text is phrased by the grammar rather than canonically (at ``TaskOptions.phrasing`` 1).
_PHRASED_SHARES: dict[str, float] = {"request": 0.7, "describe": 0.5, "question": 0.7, "claim": 0.3, "edit": 0.7}


def _phrased(rng: np.random.Generator, split: Optional[str], options: TaskOptions, text: str, canonical: str,
             phrase) -> str:
    """``phrase()`` (a grammar phrasing) with probability ``_PHRASED_SHARES[text]`` x ``options.phrasing``, else the
    canonical text."""
    share = _PHRASED_SHARES[text] * options.phrasing
    return phrase() if split is not None and rng.random() < share else canonical


def _draw_task(kind: str, rng: np.random.Generator, options: TaskOptions, split: Optional[str]) -> Task:
    task = _draw_task_texts(kind, rng, options, split)
    scenes = tuple(s for s in (task.source, task.target) if s is not None)
    return replace(task, about=scenes + task.about)


def _draw_task_texts(kind: str, rng: np.random.Generator, options: TaskOptions, split: Optional[str]) -> Task:
    scene = sample_scene(rng, split=split)
    cap = caption(scene)
    request = _phrased(rng, split, options, "request", cap, lambda: phrasing.request_text(scene, rng, split))
    if kind == "t2i":
        return Task(kind, request, target=scene)
    if kind == "t2i_thinking":
        return Task(kind, request, answer=plan(scene), target=scene)
    if kind == "caption":
        return Task(kind, _phrased(rng, split, options, "describe", DESCRIBE_QUESTION, lambda: phrasing.describe_text(rng, split)),
                    answer=cap, source=scene)
    if kind == "qa":
        # one question kind drawn uniformly (count, colour, position, presence), then one of its questions:
        # drawing among all questions would ask twice as often about counts and presence
        qs = questions(scene, rng)
        kinds = sorted({q.kind for q in qs})
        k = _pick_question_kind(kinds, options.qa_kinds, rng)
        qs = [q for q in qs if q.kind == k]
        qa = qs[int(rng.integers(len(qs)))]
        counted = _COUNTED_KIND.get(qa.question)  # the kind a "How many <kind>s" question counts, else None
        if counted and options.count_present and scene.shapes and rng.random() < options.count_present:
            present = sorted({s.kind for s in scene.shapes}, key=SHAPES.index)
            counted = present[int(rng.integers(len(present)))]
            qa = QA("count", COUNT_KIND_QUESTION.format(kind=counted), str(len(scene.find(kind=counted))),
                    ("count_kind", counted))
        if options.shape_questions and k == "color" and rng.random() < options.shape_questions:
            s = scene.shapes[int(rng.integers(len(scene)))]
            qa = QA("color", SHAPE_QUESTION.format(where=position_phrase(s.position)), s.kind)
        if counted and options.count_list and rng.random() < options.count_list:
            found = scene.find(kind=counted)
            if found:
                qa = QA("count", qa.question, f"{len(found)}: {join_phrases([s.describe() for s in found])}.")
        question = _phrased(rng, split, options, "question", qa.question, lambda: phrasing.question_text(qa, rng, split)) \
            if qa.intent else qa.question
        return Task(kind, question, answer=qa.answer, source=scene)
    if kind == "verify":
        # half the images match the request, half are flawed drawings of it
        shown = scene if rng.random() < 0.5 else corrupt_scene(scene, rng)
        q = CHECK_QUESTION if rng.random() < 0.6 else RECHECK_QUESTION
        return Task(kind, q.format(prompt=request), answer=verify_answer(scene, shown), source=shown, about=(scene,))
    if kind == "claim":
        shown = scene if rng.random() < 0.5 else corrupt_scene(scene, rng)
        s = scene.shapes[int(rng.integers(len(scene)))]
        claim = _phrased(rng, split, options, "claim", s.describe(), lambda: phrasing.shape_text(s, rng, split))
        return Task(kind, INSPECT_PROMPT.format(claim=claim), answer=_claim_answer(shown, s), source=shown, about=(scene,))
    if kind == "claims":
        return Task(kind, CLAIMS_PROMPT.format(prompt=request), answer="\n".join(s.describe() for s in scene.shapes),
                    about=(scene,))
    if kind == "edit":
        for _ in range(8):
            e = make_edit(scene, ("recolor", "move", "add", "remove")[int(rng.integers(4))], rng)
            if e is not None:
                break
        else:
            e = make_edit(scene, "recolor", rng)
            assert e is not None  # a scene always has a shape to recolour
        text = _phrased(rng, split, options, "edit", e.instruction, lambda: phrasing.edit_text(e, rng, split))
        return Task(kind, text, source=e.source, target=e.target)
    # fix: a flawed drawing, the request, and the check's feedback (usually right, sometimes empty)
    if options.fix_correct and rng.random() < options.fix_correct:
        # the drawing is already right; the check wrongly complained (or said nothing): keep it as it is
        wrong = corrupt_scene(scene, rng)
        feedback = verify_answer(scene, wrong) if rng.random() < 0.85 else ""
        return Task(kind, fix_instruction(request, feedback).rstrip(), source=scene, target=scene, about=(wrong,))
    shown = corrupt_scene(scene, rng)
    feedback = verify_answer(scene, shown) if rng.random() < 0.85 else ""
    return Task(kind, fix_instruction(request, feedback).rstrip(), source=shown, target=_keep_unchanged(shown, scene),
                about=(scene,))


def _keep_unchanged(shown: Scene, target: Scene) -> Scene:
    """The target scene with shapes that were already right keeping their drawn size and offset."""
    out = []
    for s in target.shapes:
        f = shown.at(s.position)
        out.append(f if f is not None and f.key() == s.key() else s)
    return Scene(tuple(out))
