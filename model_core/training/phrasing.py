"""A grammar of phrasings for the shapes world, with a fixed part held out from training.

Every text the shapes model is taught (requests to draw, questions, edit instructions, "describe" prompts)
is rendered here from structure (a :class:`shapes.Scene`, a :class:`shapes.QA` intent, a
:class:`shapes.Edit`) by choosing among frames and forms: synonyms (centre / center / middle, upper left /
top left, colour / color, ...), word orders (shapes listed in any order, the position before or after the
shape), imperative and question forms, casing and final punctuation.

Some frames are **held out** (``Frame.held_out``): ``split="train"`` never chooses them, ``split="heldout"``
always uses at least one, so a held-out text is never produced for training (``tests/test_held_out.py``
checks it on the training stream). Held-out frames recombine words that training frames use, in orders
training never shows. Casing is not held out: a byte-level tokenizer gives an upper-case word pieces of its
own, so it must be taught.

:func:`parse_request` reads a request back into a scene (any phrasing of this grammar, and the canonical
captions); :func:`scope_problem` says what in a request lies outside the world (an unknown colour or kind,
more shapes than fit, a thing that is no shape at all), so a caller can answer with what the model can
draw instead of drawing something wrong.

Imports only numpy (through ``shapes``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .shapes import COLORS, GRID, MAX_SHAPES, SHAPES, Edit, QA, Scene, Shape, check_split, join_phrases

__all__ = [
    "Frame",
    "describe_text",
    "edit_text",
    "outside_words",
    "parse_position",
    "parse_request",
    "pick_frame",
    "position_text",
    "question_text",
    "request_text",
    "scope_problem",
    "shape_text",
    "world_summary",
]


@dataclass(frozen=True)
class Frame:
    """A template ({name} slots) and whether it is held out from training."""

    text: str
    held_out: bool = False


def _frames(train: Sequence[str], held: Sequence[str]) -> tuple[Frame, ...]:
    return tuple(Frame(t) for t in train) + tuple(Frame(t, True) for t in held)


# ------------------------------------------------------------------------------------------- positions
# noun forms of each cell ("the ___"); the first is the canonical name
POSITION_NOUNS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left", "top-left", "top left corner", "upper left corner"),
    "top": ("top", "top middle", "top center", "top centre", "upper middle"),
    "top right": ("top right", "upper right", "top-right", "top right corner", "upper right corner"),
    "left": ("left", "left side", "middle left", "left edge"),
    "center": ("center", "centre", "middle", "center cell", "middle cell"),
    "right": ("right", "right side", "middle right", "right edge"),
    "bottom left": ("bottom left", "lower left", "bottom-left", "bottom left corner", "lower left corner"),
    "bottom": ("bottom", "bottom middle", "bottom center", "bottom centre", "lower middle"),
    "bottom right": ("bottom right", "lower right", "bottom-right", "bottom right corner", "lower right corner"),
}
_PREPS: dict[str, tuple[str, ...]] = {"corner": ("at the", "in the"), "edge": ("at the", "in the"),
                                      "side": ("on the", "at the"), "center": ("in the", "at the")}


def _cell_kind(position: str) -> str:
    if position == "center":
        return "center"
    if position in ("left", "right"):
        return "side"
    return "corner" if " " in position else "edge"


def position_text(position: str, rng: np.random.Generator) -> str:
    """A prepositional phrase for a cell: 'in the upper left corner', 'in the middle', 'on the left side'."""
    nouns = POSITION_NOUNS[position]
    noun = nouns[int(rng.integers(len(nouns)))]
    preps = _PREPS[_cell_kind(position)]
    return f"{preps[int(rng.integers(len(preps)))]} {noun}"


def position_noun(position: str, rng: np.random.Generator) -> str:
    nouns = POSITION_NOUNS[position]
    return nouns[int(rng.integers(len(nouns)))]


# -------------------------------------------------------------------------------------------- choosing
def _articles(text: str, rng: np.random.Generator) -> str:
    """'a orange' -> 'an orange' (usually; the canonical captions say 'a orange', so both are taught)."""
    return re.sub(r"\b([Aa]) (orange)\b", r"\1n \2", text) if rng.random() < 0.7 else text


def pick_frame(frames: Sequence[Frame], rng: np.random.Generator, split: Optional[str]) -> Frame:
    """A frame for ``split``: train frames only, held-out frames only, or (None) any."""
    check_split(split)
    pool = [f for f in frames if split is None or f.held_out == (split == "heldout")]
    if not pool:
        raise ValueError(f"no {split} frame among {[f.text for f in frames]}")
    return pool[int(rng.integers(len(pool)))]


def _case(text: str, rng: np.random.Generator, sentence: bool) -> str:
    """Casing: mostly as written (a sentence starts with a capital), sometimes all lower, UPPER or Title."""
    r = rng.random()
    if r < 0.12:
        return text.lower()
    if r < 0.22:
        return text.upper()
    if r < 0.27:
        return text.title()
    return text[:1].upper() + text[1:] if sentence else text


def _end(text: str, rng: np.random.Generator, mark: str) -> str:
    """Final punctuation: the sentence's own mark, none, or another one."""
    body = text.rstrip(".?!")
    r = rng.random()
    if r < 0.7:
        return body + mark
    if r < 0.88:
        return body
    return body + (" ?" if mark == "?" else "!")


# --------------------------------------------------------------------------------------------- requests
SHAPE_FORMS = _frames(
    ("a {c} {k} {p}", "one {c} {k} {p}", "a {k} coloured {c} {p}", "a {k} colored {c} {p}", "{p} a {c} {k}",
     "a {c} {k} placed {p}"),
    ("a {k} in {c} {p}", "{p} there is a {c} {k}"),
)
LEADS = _frames(
    ("", "", "", "Draw ", "Draw me ", "Please draw ", "Paint ", "An image of ", "A picture of ", "Show ",
     "Make an image with ", "Create an image of ", "Generate ", "Draw a picture with "),
    ("Could you draw ", "I want a picture of ", "Sketch "),
)
JOINS = (" and ", ", ", "; ", " plus ", " with ")


def shape_text(shape: Shape, rng: np.random.Generator, split: Optional[str] = "train") -> str:
    """One shape with its place: 'a red circle at the top left', 'a circle coloured red in the upper left corner'."""
    form = pick_frame(SHAPE_FORMS, rng, split)
    return form.text.format(c=shape.color, k=shape.kind, p=position_text(shape.position, rng))


def request_text(scene: Scene, rng: np.random.Generator, split: Optional[str] = "train") -> str:
    """A request to draw ``scene``: a lead, the shapes (any order, any join), casing and punctuation.

    ``split="heldout"``: at least one held-out choice (the lead, or the form of one shape)."""
    check_split(split)
    shapes = list(scene.shapes)
    if rng.random() < 0.5:
        shapes = [shapes[i] for i in rng.permutation(len(shapes))]
    held_lead = split == "heldout" and rng.random() < 0.5
    held_shape = -1 if split != "heldout" or held_lead else int(rng.integers(len(shapes)))
    lead = pick_frame(LEADS, rng, "heldout" if held_lead else "train").text
    parts = [shape_text(s, rng, "heldout" if i == held_shape else "train") for i, s in enumerate(shapes)]
    if len(parts) > 1 and rng.random() < 0.5:
        text = join_phrases(parts)
    else:
        join = JOINS[int(rng.integers(len(JOINS)))]
        text = join.join(parts)
    text = _case(_articles(lead + text, rng), rng, sentence=bool(lead))
    return _end(text, rng, ".") if lead or rng.random() < 0.5 else text


# -------------------------------------------------------------------------------------------- questions
QUESTION_FRAMES: dict[str, tuple[Frame, ...]] = {
    "count_all": _frames(
        ("How many shapes are there?", "How many shapes are in the image?", "How many shapes do you see?",
         "Count the shapes.", "How many shapes are in the picture?", "What is the number of shapes?"),
        ("How many shapes does the image contain?", "Count the shapes in the picture."),
    ),
    "count_kind": _frames(
        ("How many {k}s are there?", "How many {k}s are in the image?", "How many {k}s do you see?",
         "Count the {k}s.", "What is the number of {k}s?", "How many {k}s are in the picture?"),
        ("How many {k}s does the picture contain?", "Count the {k}s in the image."),
    ),
    "color_at": _frames(
        ("What color is the shape {p}?", "What colour is the shape {p}?", "Which color is the shape {p}?",
         "What is the colour of the shape {p}?", "Tell me the color of the shape {p}.", "What colour is {p}?"),
        ("The shape {p} is what colour?", "Which colour does the shape {p} have?"),
    ),
    "where": _frames(
        ("Where is the {n}?", "Where is the {n} in the image?", "Which cell is the {n} in?",
         "Where can you see the {n}?", "Tell me where the {n} is.", "Where is the {n} in the picture?"),
        ("In which cell is the {n}?", "Which part of the image is the {n} in?"),
    ),
    "is_there": _frames(
        ("Is there a {n}?", "Do you see a {n}?", "Does the image contain a {n}?", "Is there a {n} in the image?",
         "Can you see a {n}?", "Is there a {n} in the picture?"),
        ("Does the picture contain a {n}?", "Is a {n} in the image?"),
    ),
    "is_there_at": _frames(
        ("Is there a {n} {p}?", "Do you see a {n} {p}?", "Is the shape {p} a {n}?", "Is there a {n} {p} of the image?"),
        ("Can you see a {n} {p}?", "Does the image contain a {n} {p}?"),
    ),
}


def _name(color: str, kind: str, rng: np.random.Generator) -> str:
    return f"{kind} coloured {color}" if rng.random() < 0.1 else f"{color} {kind}"


def question_text(qa: QA, rng: np.random.Generator, split: Optional[str] = "train") -> str:
    """The question of ``qa`` (by its ``intent``) in a frame of ``split``, with casing and punctuation."""
    if not qa.intent:
        raise ValueError(f"{qa.question!r}: a QA needs its intent to be rephrased")
    what, *args = qa.intent
    frame = pick_frame(QUESTION_FRAMES[what], rng, split).text
    slots: dict[str, str] = {}
    if what == "count_kind":
        slots["k"] = args[0]
    elif what == "color_at":
        slots["p"] = position_text(args[0], rng)
    elif what in ("where", "is_there"):
        slots["n"] = _name(args[0], args[1], rng)
    elif what == "is_there_at":
        slots.update(n=_name(args[0], args[1], rng), p=position_text(args[2], rng))
    text = _articles(frame.format(**slots), rng)
    return _end(_case(text, rng, sentence=True), rng, text[-1])


DESCRIBE_FRAMES = _frames(
    ("Describe the image.", "What is in the image?", "Describe this picture.", "What do you see?",
     "Describe the picture.", "What shapes are in the image?"),
    ("What does the image show?", "Tell me what is in the picture."),
)


def describe_text(rng: np.random.Generator, split: Optional[str] = "train") -> str:
    text = pick_frame(DESCRIBE_FRAMES, rng, split).text
    return _end(_case(text, rng, sentence=True), rng, text[-1])


# ---------------------------------------------------------------------------------------------- edits
EDIT_FRAMES: dict[str, tuple[Frame, ...]] = {
    "recolor": _frames(
        ("Make the {r} {v}.", "Change the {r} to {v}.", "Paint the {r} {v}.", "Recolor the {r} {v}.",
         "Recolour the {r} {v}.", "Change the colour of the {r} to {v}.", "Turn the {r} {v}."),
        ("Make the {r} {v} instead.", "Change the color of the {r} to {v} please."),
    ),
    "move": _frames(
        ("Move the {r} to the {v}.", "Put the {r} {w}.", "Place the {r} {w}.", "Shift the {r} to the {v}.",
         "Move the {r} over to the {v}."),
        ("Take the {r} to the {v}.", "Place the {r} over to the {v}."),
    ),
    "add": _frames(
        ("Add a {n} {w}.", "Put a {n} {w}.", "Draw a {n} {w}.", "Also draw a {n} {w}.", "Add a {n} {w} too."),
        ("Place a {n} {w}.", "Draw a {n} {w} as well."),
    ),
    "remove": _frames(
        ("Remove the {r}.", "Delete the {r}.", "Erase the {r}.", "Take away the {r}.", "Get rid of the {r}."),
        ("Take the {r} away.", "Remove the {r} from the picture."),
    ),
}


def shape_reference(shape: Shape, scene: Scene, rng: np.random.Generator) -> str:
    """How an instruction names a shape of ``scene``: by colour and kind, by kind alone when no other shape
    has it, by colour alone ('red shape'; colours are unique), by its place, or by all three."""
    options = [shape.name, shape.name, f"{shape.color} shape", f"shape {position_text(shape.position, rng)}",
               f"{shape.name} {position_text(shape.position, rng)}"]
    if len(scene.find(kind=shape.kind)) == 1:
        options += [shape.kind, shape.kind]
    return options[int(rng.integers(len(options)))]


def edit_text(edit: Edit, rng: np.random.Generator, split: Optional[str] = "train") -> str:
    """The instruction of ``edit`` in a frame of ``split``; the shape named as :func:`shape_reference` does."""
    frame = pick_frame(EDIT_FRAMES[edit.kind], rng, split).text
    s = edit.shape
    slots = {"r": shape_reference(s, edit.source, rng), "n": _name(s.color, s.kind, rng)}
    if edit.kind == "move":
        slots.update(v=position_noun(edit.value, rng), w=position_text(edit.value, rng))
    elif edit.kind == "recolor":
        slots["v"] = edit.value
    elif edit.kind == "add":
        slots["w"] = position_text(s.position, rng)
    text = _articles(frame.format(**slots), rng)
    return _end(_case(text, rng, sentence=True), rng, ".")


# --------------------------------------------------------------------------------------------- parsing
_NOUN_TO_CELL = {n.replace("-", " "): cell for cell, nouns in POSITION_NOUNS.items() for n in nouns}
_POSITION_RE = re.compile(r"\b(" + "|".join(sorted((re.escape(n) for n in _NOUN_TO_CELL), key=len, reverse=True))
                          + r")\b")
_COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
_KIND_RE = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b")
_CLAUSE_SPLIT = re.compile(r"\s*(?:,|;|\band\b|\bplus\b|\bwith\b|\bas well as\b)\s*")


def _normalize(text: str) -> str:
    t = text.lower().replace("-", " ").replace("_", " ")
    t = re.sub(r"[^a-z0-9 ,;]", " ", t)
    return " ".join(t.split())


def parse_position(text: str) -> Optional[str]:
    """The first cell a text names ('in the upper-left corner' -> 'top left'), or None."""
    m = _POSITION_RE.search(_normalize(text))
    return _NOUN_TO_CELL[m.group(1)] if m else None


def _clauses(t: str):
    """(colours, kinds, cells) named in each clause of a normalised text, clauses split at commas, semicolons and
    'and' / 'plus' / 'with' / 'as well as'."""
    for clause in _CLAUSE_SPLIT.split(t):
        yield (_COLOR_RE.findall(clause), _KIND_RE.findall(clause),
               [_NOUN_TO_CELL[m] for m in _POSITION_RE.findall(clause)])


def parse_request(text: str) -> Optional[Scene]:
    """The scene a request of this grammar asks for, or None when it is not one (a clause names a shape
    without its colour or place, two shapes share a cell or a colour, or no shape is named).

    Clauses are split at commas, semicolons and 'and' / 'plus' / 'with'; each clause that names anything
    must name exactly one colour, one kind and one cell."""
    shapes: list[Shape] = []
    for colors, kinds, cells in _clauses(_normalize(text)):
        if not (colors or kinds or cells):
            continue
        if len(colors) != 1 or len(kinds) != 1 or len(cells) != 1:
            return None
        shapes.append(Shape(kinds[0], colors[0], cells[0]))
    if not shapes or len({s.position for s in shapes}) != len(shapes) or len({s.color for s in shapes}) != len(shapes):
        return None
    return Scene(tuple(shapes))


# ------------------------------------------------------------------------------------------------ scope
OTHER_COLORS = ("black", "white", "grey", "gray", "pink", "brown", "cyan", "magenta", "violet", "gold", "golden",
                "silver", "teal", "navy", "maroon", "beige", "turquoise", "lime", "indigo", "olive", "crimson",
                "scarlet", "lavender", "tan", "aqua")
# ("line", "point", "dot" and "ring" are left out: "in line with", "at this point" are no request for a shape)
OTHER_SHAPES = ("hexagon", "pentagon", "octagon", "star", "heart", "rectangle", "oval", "ellipse", "arrow",
                "cross", "cube", "sphere", "cylinder", "cone", "polygon", "crescent", "rhombus", "trapezoid", "spiral")
_NUMBER_WORDS = {"four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
                 "twelve": 12, "twenty": 20, "hundred": 100, "dozen": 12, "many": 4, "several": 4, "lots": 4}
_WORDS = ("zero", "one", "two", "three", "four")
_OTHER_RE = re.compile(r"\b(" + "|".join(OTHER_COLORS + OTHER_SHAPES) + r")(?:e?s)?\b")
_SHAPE_WORD_RE = re.compile(r"\b(" + "|".join(SHAPES) + r"|shape)s?\b")


def world_summary() -> str:
    """What the shapes model can draw and see, in one sentence."""
    return (f"This model knows only {join_phrases([k + 's' for k in SHAPES])} in "
            f"{join_phrases(list(COLORS)).replace(' and ', ' or ')}: one to {_WORDS[MAX_SHAPES]} shapes on a white canvas, each "
            f"in its own cell of a {GRID}x{GRID} grid and each in its own colour.")


def outside_words(text: str) -> list[str]:
    """The colour and shape words of ``text`` that the world lacks ('black', 'hexagon'; plurals read as the
    singular), sorted, each once."""
    return _outside(_normalize(text))


def _outside(t: str) -> list[str]:
    return sorted(set(_OTHER_RE.findall(t)))


def scope_problem(text: str, edit: bool = False) -> Optional[str]:
    """Why a drawing request (or, ``edit=True``, an edit instruction) lies outside the shapes world, or None
    when it may lie inside.

    Outside: a colour or kind the world lacks ('a black hexagon'), more than three shapes or a count the world
    cannot hold ('ten red circles', 'two red circles': colours are unique), or, for a drawing request, no shape
    named at all ('a cat'; an edit may say 'make it blue'), or, for a drawing request, two of its clauses giving
    their shapes one colour ('a red circle and a red square') or one cell. The reason ends with
    :func:`world_summary`."""
    t = _normalize(text)
    found = _outside(t)
    if found:
        return f"'{', '.join(found)}' is outside what this model can draw. {world_summary()}"
    numbers = [int(w) for w in re.findall(r"\b\d+\b", t)] + [v for w, v in _NUMBER_WORDS.items() if re.search(rf"\b{w}\b", t)]
    if any(n > MAX_SHAPES for n in numbers):
        return f"{max(numbers)} shapes do not fit. {world_summary()}"
    plural = re.search(r"\b(two|three|2|3)\s+(?:(" + "|".join(COLORS) + r")\s+)(" + "|".join(SHAPES) + r")s\b", t)
    if plural:
        return f"'{plural.group(0)}': each shape has its own colour. {world_summary()}"
    if edit:
        return None
    if not _SHAPE_WORD_RE.search(t):
        return f"The request names no shape this model can draw. {world_summary()}"
    return _shared_color_or_cell(t)


def _shared_color_or_cell(t: str) -> Optional[str]:
    """Why the clauses of a normalised drawing request that each name one shape give two shapes one colour or one
    cell, or None. A clause counts only when it names exactly one kind; its colour and cell only when it names
    exactly one of each ('a red circle to the left of a blue square' is one clause and not judged here)."""
    colors: Counter[str] = Counter()
    cells: Counter[str] = Counter()
    for named, kinds, where in _clauses(t):
        if len(kinds) == 1:
            colors.update(named if len(named) == 1 else ())
            cells.update(where if len(where) == 1 else ())
    shared = sorted(c for c, n in colors.items() if n > 1)
    if shared:
        return f"two shapes are both {shared[0]}: each shape has its own colour. {world_summary()}"
    crowded = sorted(c for c, n in cells.items() if n > 1)
    if crowded:
        return f"two shapes are both at the {crowded[0]}: each cell holds one shape. {world_summary()}"
    return None
