"""The shapes world: seeded synthetic scenes with captions, questions, edits and plans, and a pixel checker.

A scene is one to three coloured shapes on a white canvas, each in its own cell of a 3x3 grid, so every
position has a name ("top left", "center", ...) and shapes never overlap. Every text (caption, questions
and answers, edit instructions, plans) is derived from the structured :class:`Scene`, and every random
choice comes from an explicit ``numpy.random.Generator``, so an example is a pure function of its seed.

The checker that reads scenes back from pixels lives in ``checker.py``.

Imports only numpy and pillow.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
"""Shape kinds, in canonical order. Triangles point up; diamonds are squares standing on a corner."""

PLURAL_STEMS: tuple[str, ...] = SHAPES + ("shape",)
"""Nouns the texts use in the plural ("How many circles are there?", "three shapes")."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (235, 200, 0),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 50, 170),
}
"""The palette: six saturated colours whose hues are at least ~25 degrees apart."""

POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
"""Cell names of the 3x3 grid in reading order; index = row * 3 + column."""

GRID = 3
BACKGROUND = (255, 255, 255)
MIN_SHAPES = 1
MAX_SHAPES = 3
SCALE_RANGE = (0.5, 0.7)
"""Side of a shape's bounding box as a fraction of the cell side."""
JITTER = 0.08
"""Largest offset of a shape's centre from its cell's centre, as a fraction of the cell side."""

_PHRASES: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

UNKNOWN = "unknown"
"""The kind or colour the checker reports for a component it cannot classify."""


def position_phrase(position: str) -> str:
    """'top left' -> 'at the top left', 'center' -> 'in the center', 'left' -> 'on the left'."""
    return _PHRASES[normalize_position(position)]


def normalize_position(text: str) -> str:
    """Canonical position name: accepts 'top-left', 'top_left', 'Top Left', 'centre', 'middle'."""
    t = re.sub(r"[\s_\-]+", " ", text.strip().lower())
    t = {"centre": "center", "middle": "center", "upper left": "top left", "upper right": "top right",
         "lower left": "bottom left", "lower right": "bottom right"}.get(t, t)
    if t not in POSITIONS:
        raise ValueError(f"unknown position {text!r}; expected one of {', '.join(POSITIONS)}")
    return t


def _cell(position: str) -> tuple[int, int]:
    """(row, column) of a position name."""
    return divmod(POSITIONS.index(position), GRID)


# ----------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One shape: kind, colour, cell, and how it sits in the cell (size and offset, fractions of the cell).

    ``scale``, ``dx`` and ``dy`` only affect rendering; two shapes *match* when kind, colour and position
    agree (:meth:`key`).
    """

    kind: str
    color: str
    position: str
    scale: float = 0.6
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPES and self.kind != UNKNOWN:
            raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {', '.join(SHAPES)}")
        if self.color not in COLORS and self.color != UNKNOWN:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {', '.join(COLORS)}")
        if self.position not in POSITIONS:
            object.__setattr__(self, "position", normalize_position(self.position))

    def key(self) -> tuple[str, str, str]:
        """(position, colour, kind): what a match compares."""
        return (self.position, self.color, self.kind)

    @property
    def name(self) -> str:
        """'red circle'."""
        return f"{self.color} {self.kind}"

    def describe(self) -> str:
        """'a red circle at the top left'."""
        return f"a {self.name} {position_phrase(self.position)}"


@dataclass(frozen=True)
class Scene:
    """A structured scene: shapes in distinct cells, kept in reading order of their cells."""

    shapes: tuple[Shape, ...] = ()

    def __post_init__(self) -> None:
        shapes = tuple(sorted(self.shapes, key=lambda s: POSITIONS.index(s.position)))
        positions = [s.position for s in shapes]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two shapes share a cell: {positions}")
        object.__setattr__(self, "shapes", shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[Shape]:
        return iter(self.shapes)

    def signature(self) -> tuple[tuple[str, str, str], ...]:
        """The sorted (position, colour, kind) triples: equal signatures mean matching scenes."""
        return tuple(s.key() for s in self.shapes)

    def at(self, position: str) -> Shape | None:
        """The shape in a cell, or None."""
        position = normalize_position(position)
        return next((s for s in self.shapes if s.position == position), None)

    def find(self, color: str | None = None, kind: str | None = None,
             position: str | None = None) -> list[Shape]:
        """Shapes matching every given attribute."""
        pos = normalize_position(position) if position is not None else None
        return [
            s
            for s in self.shapes
            if (color is None or s.color == color)
            and (kind is None or s.kind == kind)
            and (pos is None or s.position == pos)
        ]

    def free_positions(self) -> list[str]:
        used = {s.position for s in self.shapes}
        return [p for p in POSITIONS if p not in used]

    def unused_colors(self) -> list[str]:
        used = {s.color for s in self.shapes}
        return [c for c in COLORS if c not in used]

    def with_shapes(self, shapes: Sequence[Shape]) -> Scene:
        return Scene(tuple(shapes))


def sample_shape(rng: np.random.Generator, kind: str, color: str, position: str) -> Shape:
    """A shape of the given kind, colour and cell, its size and offset drawn from ``rng``."""
    scale = float(rng.uniform(*SCALE_RANGE))
    dx, dy = (float(v) for v in rng.uniform(-JITTER, JITTER, size=2))
    return Shape(kind, color, position, round(scale, 4), round(dx, 4), round(dy, 4))


SPLITS: tuple[str, ...] = ("train", "heldout")
"""The two parts of the scene space: training draws only ``train`` scenes, evaluation only ``heldout`` ones."""
HELD_OUT_SHARE = 0.2
"""The share of all scenes (by a hash of what they show) that never enters training."""


def scene_split(scene: Scene) -> str:
    """'heldout' or 'train': a fixed function of what the scene shows (its signature), not of how it was drawn.

    A scene of one, two or three shapes is held out when the first 8 bytes of the SHA-256 of its signature,
    read as a fraction, fall below :data:`HELD_OUT_SHARE`; so a held-out scene is never drawn by any training
    stream, whatever its size and offsets, and the split needs no table."""
    key = ";".join(",".join(t) for t in scene.signature()).encode()
    frac = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0 ** 64
    return "heldout" if frac < HELD_OUT_SHARE else "train"


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)} or None")


def sample_scene(rng: np.random.Generator, min_shapes: int = MIN_SHAPES, max_shapes: int = MAX_SHAPES,
                 split: str | None = None) -> Scene:
    """A random scene with distinct cells and distinct colours (so 'the red shape' is never ambiguous).

    ``split``: draw again until the scene lies in that part of the scene space (:func:`scene_split`);
    None draws from all scenes."""
    if not 0 <= min_shapes <= max_shapes <= min(len(POSITIONS), len(COLORS)):
        raise ValueError(f"bad shape count range [{min_shapes}, {max_shapes}]")
    check_split(split)
    while True:
        n = int(rng.integers(min_shapes, max_shapes + 1))
        positions = rng.choice(len(POSITIONS), size=n, replace=False)
        colors = rng.choice(len(COLORS), size=n, replace=False)
        color_names = list(COLORS)
        shapes = [
            sample_shape(rng, SHAPES[int(rng.integers(len(SHAPES)))], color_names[int(c)], POSITIONS[int(p)])
            for p, c in zip(positions, colors)
        ]
        scene = Scene(tuple(shapes))
        if split is None or not scene.shapes or scene_split(scene) == split:
            return scene


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def shape_box(shape: Shape, size: float = 1.0) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of a shape on a canvas of side ``size``."""
    row, col = _cell(shape.position)
    c = size / GRID
    cx, cy = (col + 0.5 + shape.dx) * c, (row + 0.5 + shape.dy) * c
    h = shape.scale * c / 2
    return (cx - h, cy - h, cx + h, cy + h)


def render(scene: Scene, size: int | tuple[int, int] = 128, supersample: int = 4) -> Image.Image:
    """The scene as an RGB image (white background), antialiased by drawing at ``supersample`` x size."""
    w, h = (size, size) if isinstance(size, int) else size
    if w < 16 or h < 16:
        raise ValueError(f"canvas {w}x{h} is too small (16 px minimum)")
    ss = max(1, int(supersample))
    big = Image.new("RGB", (w * ss, h * ss), BACKGROUND)
    draw = ImageDraw.Draw(big)
    for shape in scene.shapes:
        if shape.kind == UNKNOWN or shape.color == UNKNOWN:
            raise ValueError(f"cannot render {shape}")
        x0, y0, x1, y1 = shape_box(shape, 1.0)
        x0, x1 = x0 * w * ss, x1 * w * ss
        y0, y1 = y0 * h * ss, y1 * h * ss
        fill = COLORS[shape.color]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "triangle":
            draw.polygon([(mx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif shape.kind == "diamond":
            draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)
    return big if ss == 1 else big.reduce(ss)  # box filter: each pixel is its area coverage


# ----------------------------------------------------------------------------------------------------------
# Texts: caption, questions, edits, plans
# ----------------------------------------------------------------------------------------------------------


def join_phrases(parts: Sequence[str]) -> str:
    """'a, b and c': the phrases as one English list ('' for none)."""
    if not parts:
        return ""
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """'a red circle at the top left and a blue square in the center' (reading order)."""
    return join_phrases([s.describe() for s in scene.shapes]) if scene.shapes else "an empty white canvas"


_ITEM = re.compile(
    r"an?\s+(?P<color>" + "|".join(COLORS) + r")\s+(?P<kind>" + "|".join(SHAPES) + r")s?\s+"
    r"(?:at|in|on)\s+the\s+(?P<pos>" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r")\b"
)


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (inverse of :func:`caption`; scale and offsets take defaults).

    Raises ValueError when the text names no shape or two shapes in one cell.
    """
    t = re.sub(r"[\s_\-]+", " ", text.lower().replace("centre", "center"))
    shapes = [Shape(m["kind"], m["color"], m["pos"]) for m in _ITEM.finditer(t)]
    if not shapes and "empty" not in t:
        raise ValueError(f"no shape found in {text!r}")
    return Scene(tuple(shapes))


def _count_word(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def plan(scene: Scene) -> str:
    """A short drawing plan for thinking mode: the count, then one line per shape in reading order."""
    n = len(scene)
    lines = [f"The canvas is white and holds {_count_word(n)} shape{'s' if n != 1 else ''}."]
    for i, s in enumerate(scene.shapes, 1):
        lines.append(f"{i}. Draw a {s.name} in the {s.position} cell.")
    lines.append("Leave every other cell empty.")
    return "\n".join(lines)


@dataclass(frozen=True)
class QA:
    """A question about a scene, its answer, and its kind: count | color | position | presence."""

    kind: str
    question: str
    answer: str
    intent: tuple = ()
    """What is asked, for rephrasing (``phrasing.question_text``): ("count_all",), ("count_kind", kind),
    ("color_at", position), ("where", colour, kind), ("is_there", colour, kind) or
    ("is_there_at", colour, kind, position)."""


COUNT_ALL_QUESTION = "How many shapes are there?"
COUNT_KIND_QUESTION = "How many {kind}s are there?"


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """Questions of every kind with their answers, all read off the scene.

    count (all shapes, then one kind), color (of the shape in an occupied cell), position (of a shape named
    by colour and kind), presence (yes or no with equal odds, of a colour-kind pair anywhere and in a cell).
    """
    out: list[QA] = []
    n = len(scene)
    out.append(QA("count", COUNT_ALL_QUESTION, str(n), ("count_all",)))
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    out.append(QA("count", COUNT_KIND_QUESTION.format(kind=kind), str(len(scene.find(kind=kind))), ("count_kind", kind)))
    if n:
        s = scene.shapes[int(rng.integers(n))]
        out.append(QA("color", f"What color is the shape {position_phrase(s.position)}?", s.color, ("color_at", s.position)))
        s = scene.shapes[int(rng.integers(n))]
        out.append(QA("position", f"Where is the {s.name}?", s.position, ("where", s.color, s.kind)))
    # presence anywhere
    if n and rng.random() < 0.5:
        s = scene.shapes[int(rng.integers(n))]
        out.append(QA("presence", f"Is there a {s.name}?", "yes", ("is_there", s.color, s.kind)))
    else:
        absent = [(c, k) for c in COLORS for k in SHAPES if not scene.find(color=c, kind=k)]
        c, k = absent[int(rng.integers(len(absent)))]
        out.append(QA("presence", f"Is there a {c} {k}?", "no", ("is_there", c, k)))
    # presence at a position
    if n and rng.random() < 0.5:
        s = scene.shapes[int(rng.integers(n))]
        out.append(QA("presence", f"Is there a {s.name} {position_phrase(s.position)}?", "yes",
                      ("is_there_at", s.color, s.kind, s.position)))
    else:
        triples = [(c, k, p) for c in COLORS for k in SHAPES for p in POSITIONS if not scene.find(c, k, p)]
        c, k, p = triples[int(rng.integers(len(triples)))]
        out.append(QA("presence", f"Is there a {c} {k} {position_phrase(p)}?", "no", ("is_there_at", c, k, p)))
    return out


EDIT_KINDS: tuple[str, ...] = ("recolor", "move", "add", "remove")


@dataclass(frozen=True)
class Edit:
    """An edit instruction, the source and target scenes, and a short plan.

    ``shape`` is the shape acted on as it is in the source (for ``add``: as it is in the target);
    ``value`` is the new colour (recolor), the new position (move), or '' (add, remove).
    """

    kind: str
    instruction: str
    source: Scene
    target: Scene
    shape: Shape
    value: str = ""
    plan: str = ""


def make_edit(scene: Scene, kind: str, rng: np.random.Generator) -> Edit | None:
    """One random edit of the given kind, or None when it does not apply (add to a full scene, remove the
    last shape, any edit of an empty scene)."""
    n = len(scene)
    if kind == "add":
        if n >= MAX_SHAPES or not scene.unused_colors():
            return None
        free, colors = scene.free_positions(), scene.unused_colors()
        new = sample_shape(
            rng,
            SHAPES[int(rng.integers(len(SHAPES)))],
            colors[int(rng.integers(len(colors)))],
            free[int(rng.integers(len(free)))],
        )
        target = scene.with_shapes((*scene.shapes, new))
        return Edit(
            "add",
            f"Add a {new.name} {position_phrase(new.position)}.",
            scene,
            target,
            new,
            "",
            f"The {new.position} cell is empty.\n1. Draw a {new.name} there.\n2. Keep every other shape as it is.",
        )
    if kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {', '.join(EDIT_KINDS)}")
    if n == 0:
        return None
    s = scene.shapes[int(rng.integers(n))]
    others = [o for o in scene.shapes if o is not s]
    if kind == "recolor":
        colors = scene.unused_colors()
        value = colors[int(rng.integers(len(colors)))]
        target = scene.with_shapes((*others, replace(s, color=value)))
        instruction = f"Make the {s.name} {value}."
        step = f"Change its color to {value}; keep its shape, size and place."
    elif kind == "move":
        free = scene.free_positions()
        value = free[int(rng.integers(len(free)))]
        target = scene.with_shapes((*others, replace(s, position=value)))
        instruction = f"Move the {s.name} to the {value}."
        step = f"Erase it there and draw it in the {value} cell."
    else:  # remove
        if n <= MIN_SHAPES:
            return None
        value, target = "", scene.with_shapes(others)
        instruction = f"Remove the {s.name}."
        step = "Paint that cell white."
    plan_text = f"Find the {s.name} in the {s.position} cell.\n1. {step}\n2. Keep every other shape as it is."
    return Edit(kind, instruction, scene, target, s, value, plan_text)


def edits(scene: Scene, rng: np.random.Generator) -> list[Edit]:
    """One edit of every kind that applies to the scene, in :data:`EDIT_KINDS` order."""
    return [e for k in EDIT_KINDS if (e := make_edit(scene, k, rng)) is not None]


@dataclass(frozen=True)
class Example:
    """Everything the shapes world says about one scene."""

    seed: int
    index: int
    scene: Scene
    caption: str
    questions: tuple[QA, ...]
    edits: tuple[Edit, ...]
    plan: str

    def image(self, size: int = 128) -> Image.Image:
        return render(self.scene, size)


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for example ``index`` of world ``seed``: independent of how many examples are drawn."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.default_rng([int(seed), int(index)])


def make_example(seed: int, index: int = 0, split: str | None = None) -> Example:
    """Example ``index`` of world ``seed``: a pure function of the numbers (and ``split``, the part of the
    scene space its scene is drawn from; None: all of it)."""
    rng = example_rng(seed, index)
    scene = sample_scene(rng, split=split)
    return Example(
        seed=seed,
        index=index,
        scene=scene,
        caption=caption(scene),
        questions=tuple(questions(scene, rng)),
        edits=tuple(edits(scene, rng)),
        plan=plan(scene),
    )


@dataclass(frozen=True)
class ShapesWorld:
    """A seeded stream of examples: ``ShapesWorld(seed)[i]`` is always the same example."""

    seed: int = 0
    split: str | None = None
    """Draw scenes only from this part of the scene space (``scene_split``); None: all scenes."""

    def __post_init__(self) -> None:
        check_split(self.split)

    def __getitem__(self, index: int) -> Example:
        return make_example(self.seed, index, self.split)

    def examples(self, n: int, start: int = 0) -> list[Example]:
        return [make_example(self.seed, i, self.split) for i in range(start, start + n)]

    def __iter__(self) -> Iterator[Example]:
        i = 0
        while True:
            yield make_example(self.seed, i, self.split)
            i += 1
