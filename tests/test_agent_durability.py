"""Durable runs: a process killed during a model call resumes from SQLite with nothing lost and no
completed call repeated; the final state equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lladauni.agent import Agent, ScriptedBackend
from tests.agent_fixtures import comparable

ROOT = Path(__file__).resolve().parents[1]
REPLIES = {"chat": "1. a red cat\n2. a blue sky\n3. a green hat"}


def _understand(q: str) -> str:
    return "yes" if "cat" in q else "no"


RUN = dict(graph="draw_inspect_refine", max_iterations=2, refine="edit", thread_id="job")


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so no node turns it into an error message."""


class CrashingBackend(ScriptedBackend):
    def __init__(self, crash_at: tuple[str, int], **kw):
        super().__init__(**kw)
        self.crash_at = crash_at

    def _enter(self, method, key, progress):
        super()._enter(method, key, progress)
        if (method, self._count[method]) == self.crash_at:
            raise Crash(method)


def _reference(tmp_path: Path) -> tuple[dict, list]:
    b = ScriptedBackend(replies={**REPLIES, "understand": _understand})
    r = Agent(b, runs_dir=tmp_path / "ref", checkpoint=tmp_path / "ref.sqlite").run("a red cat, blue sky, green hat", **RUN)
    assert r.status == "capped"
    return comparable(r.state), b.calls


@pytest.mark.parametrize("crash_at", [("edit_image", 1), ("understand", 5)])
def test_resume_after_a_crash_mid_graph(tmp_path, crash_at):
    """Crash inside refine's edit, and inside the second round's parallel inspections (completed
    sibling tasks' writes are kept as pending writes and not rerun)."""
    ref_state, ref_calls = _reference(tmp_path)
    db = tmp_path / "run.sqlite"
    b1 = CrashingBackend(crash_at, replies={**REPLIES, "understand": _understand})
    with pytest.raises(Crash):
        Agent(b1, runs_dir=tmp_path / "runs", checkpoint=db).run("a red cat, blue sky, green hat", **RUN)
    assert (tmp_path / "runs" / "job" / "trace.json").is_file()
    b2 = ScriptedBackend(replies={**REPLIES, "understand": _understand})
    agent = Agent(b2, runs_dir=tmp_path / "runs", checkpoint=db)
    r = agent.resume("job")
    assert r.status == "capped"
    state = comparable(r.state)
    state.pop("timeline"), ref_state.pop("timeline")
    assert state == ref_state
    assert sorted(b1.calls + b2.calls) == sorted(ref_calls)  # every call ran exactly once overall
    assert agent.resume("job").status == "capped" and len(b2.calls) == len(ref_calls) - len(b1.calls)


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from lladauni.agent import Agent, ScriptedBackend
    from tests.test_agent_durability import REPLIES, RUN, _understand
    b = ScriptedBackend(replies={{**REPLIES, "understand": _understand}}, journal={journal!r}, delay={{"edit_image": 60}})
    Agent(b, runs_dir={runs!r}, checkpoint={db!r}).run("a red cat, blue sky, green hat", **RUN)
    """
)


def _journal(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def test_killed_process_resumes_from_sqlite(tmp_path):
    ref_state, ref_calls = _reference(tmp_path)
    journal, db, runs = tmp_path / "journal.jsonl", tmp_path / "run.sqlite", tmp_path / "runs"
    code = CHILD.format(root=str(ROOT), journal=str(journal), runs=str(runs), db=str(db))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(e["event"] == "start" and e["method"] == "edit_image" for e in _journal(journal)):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the child never reached the edit call"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # during the model call
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = [(e["method"], e["key"]) for e in _journal(journal) if e["event"] == "done"]
    assert [m for m, _ in before] == ["chat", "generate_image", "understand", "understand", "understand"]

    b = ScriptedBackend(replies={**REPLIES, "understand": _understand}, journal=journal)
    r = Agent(b, runs_dir=runs, checkpoint=db).resume("job")
    assert r.status == "capped"
    state = comparable(r.state)
    state.pop("timeline"), ref_state.pop("timeline")
    assert state == ref_state
    done = [(e["method"], e["key"]) for e in _journal(journal) if e["event"] == "done"]
    assert sorted(done) == sorted(ref_calls) and sorted(b.calls) == sorted(ref_calls[len(before):])
