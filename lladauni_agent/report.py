"""``trace.json`` and a self-contained ``report.html`` for one run (written into its run directory).

The trace is the final state as JSON (image references, never pixels). The report shows the
timeline of text and images, the claims and each round's verdicts; images are embedded as data
URLs read from the run directory, so the file can be mailed on its own.
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
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
.pass{color:#176} .fail{color:#b00020} pre{white-space:pre-wrap;margin:.2em 0}
"""


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
        out.append(f"<p><b>Best image</b> (claim score {state.get('best_score', 0):.2f})<br>{_img(store, state['best'], 384)}</p>")
    if state.get("claims"):
        verdicts = state.get("verdicts", [])
        rounds = sorted({v["iteration"] for v in verdicts})
        out.append("<h2>Claims</h2><table><tr><th>#</th><th>claim</th>" + "".join(f"<th>round {r}</th>" for r in rounds) + "</tr>")
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
    out.append("<h2>Timeline</h2>")
    for ev in state.get("timeline", []):
        kind = ev.get("kind", "")
        secs = f" · {ev['seconds']:.2f}s" if ev.get("seconds") else ""
        out.append(f"<div class='ev {e(kind)}'><span class='muted'>{e(ev.get('node', ''))} · {e(kind)} · "
                   f"round {ev.get('iteration', 0)}{secs}</span>")
        if ev.get("text"):
            out.append(f"<pre>{e(ev['text'])}</pre>")
        if ev.get("image"):
            out.append(_img(store, ev["image"]))
        if kind == "claims":
            out.append("<ol>" + "".join(f"<li>{e(c)}</li>" for c in ev.get("data", {}).get("claims", [])) + "</ol>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
