"""The pixel checker of the shapes world: reads a scene back from an image without any learning.

Foreground by distance from white, 8-connected components, the colour by the hue of each component's
core, the shape by geometry (fill ratio of the bounding box, vertical position of the centroid), the
position by the cell that holds the centre of the bounding box. It works on a fixed-size copy of the
image (``CheckerConfig.work_size``), so it accepts any input size; its tolerances are fields of
:class:`CheckerConfig`. Imports only numpy and pillow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .shapes import BACKGROUND, COLORS, GRID, POSITIONS, SHAPES, UNKNOWN, Scene, Shape, normalize_position, position_phrase



@dataclass(frozen=True)
class CheckerConfig:
    """Tolerances of the pixel checker. Ratios are of the bounding box; areas are fractions of the canvas."""

    work_size: int = 128
    """Side the image is resized to before reading (any input size works); at least 96, since the smallest
    shapes must stay ~15 px wide for their geometry to be told apart."""
    ink_threshold: float = 100.0
    """A pixel is foreground when 255 - min(R, G, B) exceeds it (white is 0, palette >= 200)."""
    min_area: float = 0.003
    """Smallest component kept (smaller ones are noise); the smallest shape is ~0.014."""
    max_aspect: float = 1.6
    """Components whose box is more elongated are reported as kind 'unknown'."""
    square_fill: float = 0.855
    """For the symmetric kinds (circles, squares, diamonds), the fill ratio of the box above which a component
    is a square (a square fills 1, a circle pi/4 ~ 0.785, a diamond 0.5)."""
    circle_fill: float = 0.705
    """Likewise, the fill ratio above which a symmetric component (below ``square_fill``) is a circle."""
    min_fill: float = 0.3
    """Fill ratios below it are 'unknown'."""
    triangle_centroid: float = 0.585
    """A component whose centroid lies lower than this (fraction of box height from the top) is a triangle
    (2/3); circles, squares and diamonds are symmetric (1/2)."""
    core: float = 0.8
    """Pixels whose ink is at least this fraction of the component's 95th-percentile ink give the colour."""
    min_saturation: float = 0.35
    """Cores less saturated are colour 'unknown'."""
    max_hue_distance: float = 14.0
    """Cores further (degrees) from every palette hue are colour 'unknown'."""

    def __post_init__(self) -> None:
        if self.work_size < 96:
            raise ValueError(f"work_size {self.work_size} is too small (96 minimum)")
        if not 0.0 < self.circle_fill < self.square_fill <= 1.0:
            raise ValueError("need 0 < circle_fill < square_fill <= 1")


@dataclass(frozen=True)
class Detection:
    """One component the checker found, with the measurements behind its labels (for diagnostics)."""

    shape: Shape
    area: float
    fill: float
    aspect: float
    centroid_y: float
    hue: float
    saturation: float
    box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))


ImageLike = Image.Image | np.ndarray


def _to_array(image: ImageLike, work: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.dtype.kind == "f" and arr.max() <= 1.0 else 1.0), 0, 255)
            arr = arr.astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 image array, got shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    if image.mode != "RGB":
        if "A" in image.getbands() or image.mode == "P":
            rgba = image.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
            image = Image.alpha_composite(bg, rgba)
        image = image.convert("RGB")
    if image.size != (work, work):
        image = image.resize((work, work), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.float32)


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels (0 = background, 1..n) by run-length union-find."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)  # row-major order matches the starts
    n = len(rows)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows, np.arange(h + 1))
    for r in range(1, h):
        a0, a1 = row_first[r - 1], row_first[r]
        b0, b1 = row_first[r], row_first[r + 1]
        i, j = a0, b0
        while i < a1 and j < b1:
            # 8-connected: runs [s, e) touch when s_a <= e_b and s_b <= e_a
            if starts[i] <= ends[j] and starts[j] <= ends[i]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    labels = np.zeros((h, w), dtype=np.int32)
    roots: dict[int, int] = {}
    for k in range(n):
        root = find(k)
        lab = roots.setdefault(root, len(roots) + 1)
        labels[rows[k], starts[k] : ends[k]] = lab
    return labels


_PALETTE_HUES: dict[str, float] = {}


def _hue_sat(rgb: np.ndarray) -> tuple[float, float]:
    r, g, b = (float(v) for v in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx <= 0 or mx == mn:
        return 0.0, 0.0
    d = mx - mn
    if mx == r:
        hue = 60.0 * (((g - b) / d) % 6.0)
    elif mx == g:
        hue = 60.0 * ((b - r) / d + 2.0)
    else:
        hue = 60.0 * ((r - g) / d + 4.0)
    return hue % 360.0, d / mx


for _name, _rgb in COLORS.items():
    _PALETTE_HUES[_name] = _hue_sat(np.array(_rgb, dtype=np.float32))[0]


def _classify_color(hue: float, sat: float, cfg: CheckerConfig) -> str:
    if sat < cfg.min_saturation:
        return UNKNOWN
    best, dist = UNKNOWN, 360.0
    for name, h in _PALETTE_HUES.items():
        d = abs(hue - h) % 360.0
        d = min(d, 360.0 - d)
        if d < dist:
            best, dist = name, d
    return best if dist <= cfg.max_hue_distance else UNKNOWN


def _classify_kind(fill: float, aspect: float, centroid_y: float, cfg: CheckerConfig) -> str:
    if aspect > cfg.max_aspect or fill < cfg.min_fill:
        return UNKNOWN
    if centroid_y >= cfg.triangle_centroid and fill < cfg.square_fill:
        return "triangle"  # the only shape whose mass sits low in its box
    if fill >= cfg.square_fill:
        return "square"
    return "circle" if fill >= cfg.circle_fill else "diamond"


def detect(image: ImageLike, config: CheckerConfig | None = None) -> list[Detection]:
    """Every foreground component of the image, classified, largest first."""
    cfg = config or CheckerConfig()
    work = int(cfg.work_size)
    arr = _to_array(image, work)
    ink = 255.0 - arr.min(axis=2)
    labels = _components(ink > cfg.ink_threshold)
    out: list[Detection] = []
    total = float(work * work)
    for lab in range(1, int(labels.max()) + 1):
        ys, xs = np.nonzero(labels == lab)
        area = len(ys)
        if area < cfg.min_area * total:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        bh, bw = float(y1 - y0), float(x1 - x0)
        fill = area / (bh * bw)
        aspect = max(bh, bw) / min(bh, bw)
        centroid_y = (float(ys.mean()) + 0.5 - y0) / bh
        comp_ink = ink[ys, xs]
        core = comp_ink >= cfg.core * float(np.percentile(comp_ink, 95))
        hue, sat = _hue_sat(arr[ys[core], xs[core]].mean(axis=0))
        kind = _classify_kind(fill, aspect, centroid_y, cfg)
        color = _classify_color(hue, sat, cfg)
        cx, cy = (x0 + x1) / 2 / work, (y0 + y1) / 2 / work
        col, row = min(GRID - 1, int(cx * GRID)), min(GRID - 1, int(cy * GRID))
        cell = 1.0 / GRID
        shape = Shape(
            kind,
            color,
            POSITIONS[row * GRID + col],
            scale=round(max(bh, bw) / work / cell, 4),
            dx=round(cx / cell - col - 0.5, 4),
            dy=round(cy / cell - row - 0.5, 4),
        )
        box = (x0 / work, y0 / work, x1 / work, y1 / work)
        out.append(Detection(shape, area / total, fill, aspect, centroid_y, hue, sat, box))
    out.sort(key=lambda d: -d.area)
    return out


class CheckerError(ValueError):
    """The image cannot be read as a scene (two components in one cell)."""


def read_scene(image: ImageLike, config: CheckerConfig | None = None) -> Scene:
    """The scene in the image. Raises CheckerError when two components fall in the same cell."""
    dets = detect(image, config)
    seen: dict[str, Detection] = {}
    for d in dets:
        if d.shape.position in seen:
            raise CheckerError(f"two components in the {d.shape.position} cell")
        seen[d.shape.position] = d
    return Scene(tuple(d.shape for d in dets))


def try_read_scene(image: ImageLike, config: CheckerConfig | None = None) -> Scene | None:
    """:func:`read_scene`, or None when the image is not a readable scene."""
    try:
        return read_scene(image, config)
    except CheckerError:
        return None


def diff_scenes(expected: Scene, found: Scene | None) -> list[str]:
    """Human-readable differences ('missing: a red circle at the top left', 'unexpected: ...'); [] if equal."""
    if found is None:
        return ["the image is not a readable scene (two shapes share a cell)"]
    exp, got = set(expected.signature()), set(found.signature())
    out = []
    for p, c, k in sorted(exp - got, key=lambda t: POSITIONS.index(t[0])):
        out.append(f"missing: a {c} {k} {position_phrase(p)}")
    for p, c, k in sorted(got - exp, key=lambda t: POSITIONS.index(t[0])):
        out.append(f"unexpected: a {c} {k} {position_phrase(p)}")
    return out


def scene_matches(expected: Scene, image: ImageLike, config: CheckerConfig | None = None) -> bool:
    """True when the image holds exactly the expected shapes (kind, colour, position), nothing else."""
    found = try_read_scene(image, config)
    return found is not None and found.signature() == expected.signature()


@dataclass(frozen=True)
class Claim:
    """'There is a [colour] [kind] [at position]': None means any. ``count`` checks an exact number instead."""

    color: str | None = None
    kind: str | None = None
    position: str | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}")
        if self.kind is not None and self.kind not in SHAPES:
            raise ValueError(f"unknown shape kind {self.kind!r}")
        if self.position is not None:
            object.__setattr__(self, "position", normalize_position(self.position))


_CLAIM = re.compile(
    r"^(?:is there\s+)?(?:an?\s+)?(?:(?P<color>" + "|".join(COLORS) + r")\s+)?"
    r"(?P<kind>" + "|".join(SHAPES) + r"|shape)"
    r"(?:\s+(?:at|in|on)\s+(?:the\s+)?(?P<pos>[a-z \-_]+?))?\s*\??$"
)


def parse_claim(text: str) -> Claim:
    """'is there a red circle at the top-left?' / 'a blue shape' / 'triangle in the center' -> Claim."""
    t = " ".join(text.strip().lower().replace("centre", "center").split())
    m = _CLAIM.match(t)
    if not m:
        raise ValueError(f"cannot read a claim from {text!r}")
    kind = None if m["kind"] == "shape" else m["kind"]
    return Claim(m["color"], kind, normalize_position(m["pos"]) if m["pos"] else None)


def check_claim(image: ImageLike | Scene, claim: Claim | str, config: CheckerConfig | None = None) -> bool:
    """Whether a claim holds for an image (read by the checker) or a scene.

    Without ``count``: at least one shape matches every given attribute. With ``count``: exactly that
    many do. An unreadable image makes every claim false.
    """
    if isinstance(claim, str):
        claim = parse_claim(claim)
    scene = image if isinstance(image, Scene) else try_read_scene(image, config)
    if scene is None:
        return False
    n = len(scene.find(claim.color, claim.kind, claim.position))
    return n == claim.count if claim.count is not None else n > 0
