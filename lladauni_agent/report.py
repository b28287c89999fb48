"""``trace.json`` and a self-contained ``report.html`` for one run (written into its run directory).

The trace is the final state as JSON (image references, never pixels). The report shows the best
image (with its claim score when the run scored claims), the claims, then each round: its image
beside the model's verdicts on it (claim, pass/fail/unclear, the model's answer) and, on the
embedded shapes model, the pixel checker's verdict (from the run's ``pixel_check`` event, see
``nodes.pixel_check_event``); then the whole timeline. Images are embedded as data URLs read from
the run directory, so the file can be mailed on its own.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .artifacts import ArtifactStore
from .durable import write_atomic

__all__ = ["write_run_files", "render_html"]


def write_run_files(run_dir: os.PathLike | str, state: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``trace.json`` and ``report.html``; returns their paths."""
    store = ArtifactStore(run_dir)
    trace = {"written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "state": dict(state)}
    tpath, rpath = store.path("trace.json"), store.path("report.html")
    write_atomic(tpath, json.dumps(trace, indent=2, default=str))
    write_atomic(rpath, render_html(state, store))
    return tpath, rpath


def _img(store: ArtifactStore, ref: Mapping[str, Any] | None, width: int = 256) -> str:
    if not ref:
        return ""
    if ref.get("png"):
        try:
            data = base64.b64encode(store.path(ref["png"]).read_bytes()).decode()
        except (OSError, ValueError) as exc:
            return f'<span class="muted">image {html.escape(ref["png"])} unreadable: {html.escape(str(exc))}</span>'
        return (f'<img src="data:image/png;base64,{data}" width="{width}" '
                f'title="{html.escape(ref["sha256"][:12])} ({html.escape(ref.get("origin", ""))})">')
    return f'<span class="muted">codes only: {ref.get("h")}x{ref.get("w")} grid ({html.escape(ref.get("codes") or "")})</span>'


_CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
h1{font-size:1.3em} .muted{color:#888} .err{color:#b00020;font-weight:600}
.ev{border-left:3px solid #ccc;padding:.4em .8em;margin:.6em 0} .ev.image{border-color:#4a7}
.ev.error{border-color:#b00020} .ev.verdict{border-color:#47a} .ev.review{border-color:#a74}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
.pass{color:#176} .fail,.error{color:#b00020} .unclear{color:#a60} pre{white-space:pre-wrap;margin:.2em 0}
.round{margin:1em 0} .round>table>tbody>tr>td{border:none} .pixel{font-weight:600}
"""


def _pixel_checks(state: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """sha256 -> the pixel checker's verdict, from the run's ``pixel_check`` events."""
    out: dict[str, Mapping[str, Any]] = {}
    for ev in state.get("timeline", []):
        if ev.get("kind") == "pixel_check":
            out.update((ev.get("data") or {}).get("checks") or {})
    return out


def _pixel_line(check: Mapping[str, Any] | None) -> str:
    """'pixel checker: pass' / 'pixel checker: fail (missing: ...)' as HTML; '' without a verdict."""
    if not check:
        return ""
    e = html.escape
    if check.get("error"):
        return f"<p class='pixel unclear'>pixel checker: could not check ({e(str(check['error']))})</p>"
    if check.get("passed"):
        return "<p class='pixel pass'>pixel checker: pass</p>"
    problems = "; ".join(str(p) for p in check.get("problems") or [])
    return f"<p class='pixel fail'>pixel checker: fail{f' ({e(problems)})' if problems else ''}</p>"


def _verdict_row(ev: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(claim or question, pass | fail | unclear | error, the model's answer, inspection path) of a
    verdict event: an agent graph's ``Verdict`` or a workflow inspect node's data."""
    data = ev.get("data") or {}
    v = data.get("verdict")
    if isinstance(v, Mapping):  # agent graphs: the Verdict itself
        word = "error" if v.get("error") else {True: "pass", False: "fail"}.get(v.get("passed"), "unclear")
        return str(v.get("claim", "")), word, str(v.get("error") or v.get("answer", "")), str(v.get("retokenize", ""))
    word = "error" if ev.get("kind") == "error" else {True: "pass", False: "fail"}.get(v, "unclear")
    return str(data.get("question", "")), word, str(ev.get("text", "")), str(data.get("retokenize", ""))


def _rounds(state: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    """Each image event with the verdict events about it: those after it and before the next image
    (an agent graph's verdict goes to the latest image of its sha256)."""
    rounds: list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]] = []
    for ev in state.get("timeline", []):
        if ev.get("kind") == "image" and ev.get("image"):
            rounds.append((ev, []))
            continue
        v = (ev.get("data") or {}).get("verdict", ...)
        if ev.get("kind") not in ("verdict", "error") or v is ... or not rounds:
            continue
        sha = v.get("image") if isinstance(v, Mapping) else None
        home = next((r for r in reversed(rounds) if r[0]["image"].get("sha256") == sha), rounds[-1])
        home[1].append(ev)
    return rounds


def _rounds_html(state: Mapping[str, Any], store: ArtifactStore) -> list[str]:
    """Per image: the image, the pixel checker's verdict when there is one, and the model's verdicts."""
    e = html.escape
    checks = _pixel_checks(state)
    out = []
    for n, (ev, verdicts) in enumerate(_rounds(state), 1):
        ref = ev["image"]
        rows = "".join(f"<tr class='verdict'><td>{e(claim)}</td><td class='{word}'>{word}</td><td>{e(answer)}"
                       f"{f' <span class=muted>[{e(path)}]</span>' if path else ''}</td></tr>"
                       for claim, word, answer, path in map(_verdict_row, verdicts))
        table = (f"<table><tr><th>claim</th><th>model</th><th>model's answer</th></tr>{rows}</table>" if rows
                 else "<p class='muted'>no model verdict on this image</p>")
        out.append(f"<div class='round' id='round-{n}'><h3>round {n}: {e(ev.get('node', ''))}</h3><table><tr class='round'>"
                   f"<td class='image'>{_img(store, ref)}</td><td>{_pixel_line(checks.get(ref.get('sha256', '')))}{table}</td>"
                   "</tr></table></div>")
    return ["<h2>Rounds</h2>"] + out if out else []


def _claims_html(state: Mapping[str, Any]) -> list[str]:
    """The claims against the rounds that checked them (an agent graph's verdicts)."""
    e = html.escape
    verdicts = state.get("verdicts", [])
    rounds = sorted({v["iteration"] for v in verdicts})
    out = ["<h2>Claims</h2><table><tr><th>#</th><th>claim</th>" + "".join(f"<th>round {r}</th>" for r in rounds) + "</tr>"]
    for i, c in enumerate(state["claims"]):
        cells = []
        for r in rounds:
            v = next((v for v in verdicts if v["iteration"] == r and v["claim_index"] == i), None)
            if v is None:
                cells.append("<td></td>")
            else:
                cls, word = ("pass", "pass") if v["passed"] else ("fail", "fail" if v["passed"] is False else "unclear")
                cells.append(f"<td class='{cls}' title='{e(v['answer'])} [{e(v['retokenize'])}]'>{word}</td>")
        out.append(f"<tr><td>{i + 1}</td><td>{e(c)}</td>{''.join(cells)}</tr>")
    out.append("</table>")
    return out


def _timeline_html(state: Mapping[str, Any], store: ArtifactStore) -> list[str]:
    e = html.escape
    checks = _pixel_checks(state)
    out = ["<h2>Timeline</h2>"]
    for ev in state.get("timeline", []):
        kind = ev.get("kind", "")
        secs = f" · {ev['seconds']:.2f}s" if ev.get("seconds") else ""
        out.append(f"<div class='ev {e(kind)}'><span class='muted'>{e(ev.get('node', ''))} · {e(kind)} · "
                   f"round {ev.get('iteration', 0)}{secs}</span>")
        if ev.get("text"):
            out.append(f"<pre>{e(ev['text'])}</pre>")
        if ev.get("image"):
            out.append(_img(store, ev["image"]) + _pixel_line(checks.get(ev["image"].get("sha256", ""))))
        if kind == "claims":
            data = ev.get("data", {})
            out.append("<ol>" + "".join(f"<li>{e(c)}</li>" for c in data.get("claims", [])) + "</ol>")
            if data.get("dropped"):
                out.append("<p class='muted'>dropped (not in the request): " + e("; ".join(data["dropped"])) + "</p>")
        out.append("</div>")
    return out


def render_html(state: Mapping[str, Any], store: ArtifactStore) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>lladauni run: {e(state.get('graph', ''))}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{e(state.get('graph', 'run'))}: {e(str(state.get('status', '')))}</h1>",
           f"<p><b>Request</b><pre>{e(state.get('prompt', ''))}</pre></p>",
           f"<p class='muted'>iterations {state.get('iteration', 0)} of at most {state.get('max_iterations', '?')}; "
           f"inspection: {e(str(state.get('retokenize', '')))}</p>"]
    if state.get("error"):
        out.append(f"<p class='err'>{e(state['error'])}</p>")
    if state.get("answer"):
        out.append(f"<p><b>Answer</b><pre>{e(state['answer'])}</pre></p>")
    if state.get("best"):
        score = state.get("best_score")
        shown = f" (claim score {score:.2f})" if isinstance(score, (int, float)) and score >= 0 else ""
        check = _pixel_line(_pixel_checks(state).get(state["best"].get("sha256", "")))
        out.append(f"<p><b>Best image</b>{shown}<br>{_img(store, state['best'], 384)}</p>{check}")
    if state.get("claims"):
        out.extend(_claims_html(state))
    out.extend(_rounds_html(state, store))
    out.extend(_timeline_html(state, store))
    out.append("</body></html>")
    return "\n".join(out)
