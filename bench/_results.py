"""bench/RESULTS.md as a list of ``## `` sections that each writer replaces by heading.

Every bench writes only its own sections: a section is matched by its whole heading line,
replaced in place when present and appended otherwise. Sections nobody rewrote this run (the GPU figures, which only
a device run produces) are kept as they were.
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results"


def _key(heading: str) -> str:
    return heading[3:].strip()


def split_sections(text: str) -> tuple[str, list[str]]:
    """(preamble, sections): each section starts with its ``## `` heading line."""
    pre: list[str] = []
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            pre.append(line)
    return "\n".join(pre).rstrip() + "\n", ["\n".join(s).rstrip() + "\n" for s in sections]


def update_sections(new: list[str], path: Path = RESULTS, preamble: str | None = None) -> None:
    """Replace (by heading) or append each markdown section of ``new`` in ``path``."""
    old_pre, old = split_sections(path.read_text()) if path.exists() else (TITLE + "\n", [])
    fresh = []
    for md in new:
        _, parts = split_sections(md)
        fresh.extend(parts)
    index = {_key(s.splitlines()[0]): i for i, s in enumerate(old)}
    for s in fresh:
        k = _key(s.splitlines()[0])
        if k in index:
            old[index[k]] = s
        else:
            index[k] = len(old)
            old.append(s)
    pre = preamble if preamble is not None else old_pre
    path.write_text(pre.rstrip() + "\n\n" + "\n".join(old))
