"""Kill anywhere: a durable run SIGKILLed at any graph update, at any SQL write of a checkpoint,
or twice in a row, resumes to exactly the state of an uninterrupted run, with every model call
made exactly once overall; a state file that cannot be trusted is named, never read.

Each run happens in a forked child (the parent has imported everything once, so a case costs
milliseconds) that kills itself with SIGKILL at the chosen point. "At a graph update" means when
the k-th update reaches the caller, at a moment no model call is in flight: a call cut off
mid-way is made again by design (it never finished), and is not what these tests count.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from lladauni.agent import Agent, ScriptedBackend
from lladauni.agent import durable
from lladauni.agent.durable import ResumeError, StateFileError
from lladauni.agent.workflows import resume_workflow, run_workflow
from tests.agent_fixtures import comparable

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

ROOT = Path(__file__).resolve().parents[1]

REQUEST = "a red cat, blue sky, green hat"
RUN = dict(graph="draw_inspect_refine", max_iterations=2, refine="edit", thread_id="job")
WF_INPUTS = {"prompt": "a fox", "max_rounds": "3"}


def _understand(q: str) -> str:
    return "yes" if "cat" in q else "no"


def _backend(journal: Path) -> ScriptedBackend:
    return ScriptedBackend(replies={"chat": "1. a red cat\n2. a blue sky\n3. a green hat", "understand": _understand},
                           journal=journal)


def _wf_backend(journal: Path) -> ScriptedBackend:
    # answers that depend on the request only: a reply list would restart in every process
    return ScriptedBackend(replies={"understand": "no, the fox is missing"}, journal=journal)


# -- the child side ---------------------------------------------------------------------------------

def _quiet_killer(kind: str, at: int) -> tuple[Callable, Callable]:
    """(on_event, sql trace) hooks that SIGKILL this process at the ``at``-th update or SQL write,
    once no journaled model call is in flight."""
    inflight = [0]
    orig = durable.CallJournal._call

    def counted(self, *args, **kw):
        inflight[0] += 1
        try:
            return orig(self, *args, **kw)
        finally:
            inflight[0] -= 1

    durable.CallJournal._call = counted  # this process only: it is a forked child
    seen = [0]

    def hit() -> None:
        seen[0] += 1
        if seen[0] == at:
            deadline = time.monotonic() + 10
            while inflight[0] and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_event(part: dict) -> None:
        if kind == "update" and part["type"] == "updates":
            hit()

    def trace(sql: str) -> None:
        if kind == "sql" and sql.lstrip().upper().startswith(("CREATE", "INSERT", "UPDATE", "DELETE", "COMMIT")):
            hit()

    return on_event, trace


def _agent_child(d: Path, resume: bool, kind: str, at: int) -> None:
    on_event, trace = _quiet_killer(kind, at)
    agent = Agent(_backend(d / "calls.jsonl"), runs_dir=d / "runs", checkpoint=d / "state.sqlite")
    agent.checkpointer.conn.set_trace_callback(trace)
    r = agent.resume("job", on_event=on_event) if resume else agent.run(REQUEST, on_event=on_event, **RUN)
    (d / "result.json").write_text(json.dumps(comparable(r.state)))


def _workflow_child(d: Path, resume: bool, kind: str, at: int) -> None:
    on_event, trace = _quiet_killer(kind, at)
    orig_connect = durable.sqlite3.connect

    def connect(*a, **kw):
        conn = orig_connect(*a, **kw)
        conn.set_trace_callback(trace)
        return conn

    durable.sqlite3.connect = connect
    b = _wf_backend(d / "calls.jsonl")
    if resume:
        r = resume_workflow(d / "run", b, checkpoint=d / "state.sqlite", on_event=on_event)
    else:
        r = run_workflow("draw-check-refine", WF_INPUTS, b, run_dir=d / "run", checkpoint=d / "state.sqlite",
                         thread_id="wf", on_event=on_event)
    (d / "result.json").write_text(json.dumps(comparable(r.state)))


def fork_and_wait(target: Callable, args: tuple, timeout: float = 120.0) -> tuple[str, int]:
    """Run ``target(*args)`` in a forked child: ("signal", n) if it was killed, ("exit", code) if
    it ended (3: it raised; the error is in ``args[0]/child-error.txt``), ("hung", 0) past ``timeout``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code and a file
            Path(args[0], "child-error.txt").write_text(f"{type(exc).__name__}: {exc}")
            code = 3
        os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung", 0
        time.sleep(0.005)
    return ("signal", os.WTERMSIG(status)) if os.WIFSIGNALED(status) else ("exit", os.WEXITSTATUS(status))


# The children are forked by a fork server: a fresh interpreter that has imported everything and
# done nothing else. Forking the pytest process itself is fragile: once anything in it has called
# torch.set_num_threads, a forked child whose new threads touch torch fails ("Invalid thread pool!").
_SERVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.chdir(sys.argv[1])
import tests.test_durability_kill as T
print("ready", flush=True)
for line in sys.stdin:
    name, args = json.loads(line)
    kind, value = T.fork_and_wait(getattr(T, name), (T.Path(args[0]), *args[1:]))
    print(json.dumps([kind, value]), flush=True)
"""
_server: list = []


def _fork_server() -> subprocess.Popen:
    if not _server or _server[0].poll() is not None:
        proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(ROOT)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdout.readline().strip() == "ready", "the fork server did not start"
        _server[:] = [proc]
    return _server[0]


@pytest.fixture(scope="module", autouse=True)
def _stop_fork_server():
    yield
    if _server:
        _server[0].stdin.close()
        _server[0].wait(timeout=30)
        _server.clear()


def _fork(target: Callable, *args) -> Optional[int]:
    """``target(*args)`` in a child of the fork server: its signal number if killed, else None
    (an exit other than 0 fails with the child's error)."""
    server = _fork_server()
    server.stdin.write(json.dumps([target.__name__, [str(args[0]), *args[1:]]]) + "\n")
    kind, value = json.loads(server.stdout.readline())
    assert kind != "hung", f"{target.__name__}{args[1:]} hung"
    if kind == "signal":
        return value
    err = Path(args[0], "child-error.txt")
    assert value == 0, err.read_text() if err.exists() else value
    return None


def _calls(d: Path) -> list:
    path = d / "calls.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted((e["method"], e["key"]) for e in map(json.loads, lines) if e["event"] == "done")


def _outcome(d: Path) -> tuple[dict, list]:
    state = json.loads((d / "result.json").read_text())
    return state, _calls(d)


def _kill_then_finish(target: Callable, d: Path, kills: list[tuple[str, int]]) -> list[Optional[int]]:
    """The first run and then resumptions, killed at each point of ``kills`` in turn, then a last
    resumption that runs to the end."""
    d.mkdir(parents=True)

    def recorded() -> bool:  # a kill before run.json exists leaves nothing to resume: the run starts again
        return (d / "run" / "run.json").exists() or (d / "runs" / "job" / "run.json").exists()

    signals = [_fork(target, d, recorded(), kind, at) for kind, at in kills]
    assert _fork(target, d, recorded(), "none", 0) is None
    return signals


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    out = {}
    for name, target in (("agent", _agent_child), ("workflow", _workflow_child)):
        d = root / f"ref-{name}"
        d.mkdir()
        assert _fork(target, d, False, "none", 0) is None
        out[name] = _outcome(d)
    # how many updates and SQL writes an uninterrupted run makes (the kill points to sweep)
    counts = {}
    for name, target in (("agent", _agent_child), ("workflow", _workflow_child)):
        for kind in ("update", "sql"):
            n = 1
            while True:  # the first point past the end is the one where the child is not killed
                d = root / f"count-{name}-{kind}-{n}"
                d.mkdir()
                if _fork(target, d, False, kind, n) is None:
                    break
                n += 8
            counts[name, kind] = n
    return root, out, counts


def _check(d: Path, ref: tuple[dict, list]) -> None:
    state, calls = _outcome(d)
    ref_state, ref_calls = ref
    assert state == ref_state
    assert calls == ref_calls, "a model call was repeated or lost"
    assert not (d / "runs" / "job" / "calls").exists() and not (d / "run" / "calls").exists()


@pytest.mark.parametrize("name", ["agent", "workflow"])
@pytest.mark.parametrize("kind", ["update", "sql"])
def test_a_run_killed_at_any_point_resumes_to_the_uninterrupted_state(reference, name, kind):
    root, ref, counts = reference
    target = _agent_child if name == "agent" else _workflow_child
    killed = 0
    for at in range(1, counts[name, kind]):
        d = root / f"{name}-{kind}-{at}"
        sig = _kill_then_finish(target, d, [(kind, at)])
        killed += sig == [signal.SIGKILL]
        _check(d, ref[name])
    assert killed >= counts[name, kind] - 9  # the sweep really killed (all but the points past the end)


@pytest.mark.parametrize("name", ["agent", "workflow"])
def test_a_run_killed_twice_in_a_row_resumes_to_the_uninterrupted_state(reference, name):
    """Killed at update k of the first run, then at update j of the first resumption (and at SQL
    writes in between), for every k and a spread of j."""
    root, ref, counts = reference
    target = _agent_child if name == "agent" else _workflow_child
    for k in range(1, counts[name, "update"], 2):
        for second in (("update", 1), ("update", 3), ("sql", 2), ("sql", 5)):
            d = root / f"{name}-twice-{k}-{second[0]}{second[1]}"
            _kill_then_finish(target, d, [("update", k), second])
            _check(d, ref[name])


def test_the_stuck_state_of_the_probe_resumes(tmp_path):
    """The probe's case: killed after a node's writes were saved but before the next checkpoint
    (LangGraph then reports nothing left to run); resume used to answer status 'running' forever."""
    d = tmp_path / "c"
    d.mkdir()
    # SQL writes of one step: the node's writes, then the next checkpoint; kill between them
    found = False
    for at in range(2, 40):
        dd = tmp_path / f"probe-{at}"
        dd.mkdir()
        if _fork(_agent_child, dd, False, "sql", at) is None:
            break
        agent = Agent(_backend(dd / "x.jsonl"), runs_dir=dd / "runs", checkpoint=dd / "state.sqlite")
        snap = agent.graph("draw_inspect_refine", refine="edit", max_iterations=2).get_state(
            {"configurable": {"thread_id": "job"}})
        agent.close()
        if snap.values and not snap.next and snap.values.get("status") == "running":
            found = True
            assert _fork(_agent_child, dd, True, "none", 0) is None
            assert json.loads((dd / "result.json").read_text())["status"] == "capped"
    assert found, "no kill point left the run in LangGraph's 'nothing next' state"


# -- state files that cannot be trusted ----------------------------------------------------------------

def _finished_run(tmp_path: Path) -> Path:
    d = tmp_path / "ok"
    d.mkdir()
    assert _fork(_agent_child, d, False, "none", 0) is None
    return d


def test_a_non_sqlite_state_file_is_named(tmp_path):
    bad = tmp_path / "state.sqlite"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(4000))
    with pytest.raises(StateFileError, match=r"state\.sqlite is not a readable SQLite database"):
        Agent(_backend(tmp_path / "c.jsonl"), runs_dir=tmp_path / "runs", checkpoint=bad)


def test_a_foreign_sqlite_file_is_refused_not_written(tmp_path):
    db = tmp_path / "other.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StateFileError, match="not a lladauni state file .tables: invoices"):
        Agent(_backend(tmp_path / "c.jsonl"), runs_dir=tmp_path / "runs", checkpoint=db)
    with sqlite3.connect(db) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {"invoices"}


@pytest.mark.parametrize("where", ["blob", "pages"])
def test_a_corrupted_state_file_is_detected(tmp_path, where):
    d = _finished_run(tmp_path)
    db = d / "state.sqlite"
    with sqlite3.connect(db) as conn:  # fold the WAL into the file, so the bytes below are the data
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if where == "blob":  # one byte inside a checkpoint blob: SQLite's own check cannot see it
        with sqlite3.connect(db) as conn:
            blob = conn.execute("SELECT checkpoint FROM checkpoints ORDER BY checkpoint_id DESC LIMIT 1").fetchone()[0]
        raw = bytearray(db.read_bytes())
        at = raw.index(blob[40:80]) + 10
        raw[at] ^= 0x55
        db.write_bytes(bytes(raw))
        agent = Agent(_backend(d / "c.jsonl"), runs_dir=d / "runs", checkpoint=db)
        with pytest.raises(StateFileError, match="fails its checksum"):
            agent.resume("job")
        agent.close()
    else:  # 8 KB of random bytes in the middle of the file
        raw = bytearray(db.read_bytes())
        mid = len(raw) // 2
        raw[mid:mid + 8192] = os.urandom(min(8192, len(raw) - mid))
        db.write_bytes(bytes(raw))
        try:
            agent = Agent(_backend(d / "c.jsonl"), runs_dir=d / "runs", checkpoint=db)
        except StateFileError as exc:
            assert "state.sqlite" in str(exc)
        else:
            with pytest.raises(StateFileError, match="state.sqlite"):
                agent.resume("job")


def test_a_damaged_call_journal_entry_is_not_trusted(tmp_path):
    """A journal file whose digest fails is ignored: the call is made again."""
    d = tmp_path / "j"
    sig = _kill_then_finish(_agent_child, d, [])
    assert sig == []
    journal = durable.CallJournal(_backend(tmp_path / "x.jsonl"), tmp_path / "calls")
    slot = tmp_path / "calls" / "a.safetensors"
    from lladauni.model_core.generation.results import GenerationStats, TextResult

    journal._write(slot, TextResult("hello", [1, 2], [3], GenerationStats(forwards=2)))
    assert journal._read(slot) == TextResult("hello", [1, 2], [3], GenerationStats(forwards=2))
    raw = bytearray(slot.read_bytes())
    raw[raw.index(b"hello") + 1] ^= 0x20  # "hEllo": still valid JSON, wrong content
    slot.write_bytes(bytes(raw))
    assert journal._read(slot) is durable._MISSING


@pytest.mark.parametrize("damage", ["missing", "garbage", "no-checkpoint", "unknown-graph"])
def test_a_run_that_cannot_resume_says_why_in_one_line(tmp_path, damage):
    d = tmp_path / "r"
    d.mkdir()
    assert _fork(_agent_child, d, False, "update", 3) == signal.SIGKILL
    meta = d / "runs" / "job" / "run.json"
    state = d / "state.sqlite"
    if damage == "missing":
        meta.unlink()
    elif damage == "garbage":
        meta.write_text("{not json")
    elif damage == "unknown-graph":
        meta.write_text(json.dumps({"graph": "nope", "options": {}}))
    else:
        state = tmp_path / "other.sqlite"
    agent = Agent(_backend(d / "c.jsonl"), runs_dir=d / "runs", checkpoint=state)
    with pytest.raises(ResumeError) as info:
        agent.resume("job")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("cannot resume run 'job': ") and "; " in msg


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, reference):
    _, ref, _ = reference
    d = tmp_path / "early"
    assert _kill_then_finish(_agent_child, d, [("sql", 1)]) == [signal.SIGKILL]
    _check(d, ref["agent"])


def test_the_cli_says_in_one_line_why_a_run_cannot_resume(tmp_path, capsys):
    from lladauni.tools.cli import main

    code = main(["agent", "--resume", "ghost", "--runs-dir", str(tmp_path / "runs"),
                 "--state-db", str(tmp_path / "state.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert err[0].startswith("error: cannot resume run 'ghost': there is no run in ") and "run.json is missing" in err[0]
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    code = main(["agent", "--resume", "ghost", "--runs-dir", str(tmp_path / "runs"),
                 "--state-db", str(tmp_path / "junk.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "junk.sqlite is not a readable SQLite database" in err[0]


# -- in-process checks of the same machinery (the kill tests run it in forked children) -----------

def test_the_journal_stores_every_result_type_exactly_and_nothing_else(tmp_path):
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from lladauni.model_core.generation.prompts import ImageCodes
    from lladauni.model_core.generation.results import GenerationStats, ImageResult, InterleavedResult, TextResult
    from lladauni.model_core.generation.sampler import StepRecord

    journal = durable.CallJournal(object(), tmp_path / "calls")
    image = Image.frombytes("RGB", (3, 2), bytes(range(18)))
    stats = GenerationStats(forwards=3, forward_tokens=7, seconds=0.25, generated_tokens=2)
    text = TextResult("a “quoted” answer", [5, 6], [1, 2, 3], stats, [StepRecord(0, 1, [4, 5], [0.5, 0.25])])
    picture = ImageResult(torch.tensor([1, 16383, 7, 0]), 2, 2, image=image, thinking="plan", prompt_ids=[9], stats=stats)
    results = [text, picture, InterleavedResult(["once", picture, "end"], stats), ImageCodes(torch.tensor([3, 4]), 1, 2),
               image, [text, {"k": picture}]]
    for i, result in enumerate(results):
        slot = tmp_path / "calls" / f"{i}.safetensors"
        journal._write(slot, result)
        back = journal._read(slot)
        assert type(back) is type(result)
        assert _same(back, result), (i, back, result)

    @dataclasses.dataclass
    class Foreign:
        x: int = 1

    for foreign in (Foreign(), np.zeros(3), object()):
        slot = tmp_path / "calls" / "foreign.safetensors"
        journal._write(slot, foreign)  # not journaled: only the known result types are ever stored
        assert not slot.exists()


def _same(a, b) -> bool:
    import dataclasses

    import torch

    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if hasattr(a, "tobytes") and hasattr(a, "mode"):
        return (a.mode, a.size, a.tobytes()) == (b.mode, b.size, b.tobytes())
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_a_state_file_is_created_with_its_folders_and_reopened(tmp_path):
    """In one process: a state file in folders that do not exist yet; run, close, reopen, resume."""
    db = tmp_path / "new" / "deeper" / "state.sqlite"
    agent = Agent(_backend(tmp_path / "c.jsonl"), runs_dir=tmp_path / "runs", checkpoint=db)
    assert agent.run(REQUEST, **RUN).status == "capped"
    agent.close()
    again = Agent(_backend(tmp_path / "c2.jsonl"), runs_dir=tmp_path / "runs", checkpoint=db)
    assert again.resume("job").status == "capped"
    again.close()
    assert not (tmp_path / "c2.jsonl").exists()  # nothing ran again


def test_an_empty_sqlite_file_without_tables_is_taken_as_new(tmp_path):
    """A file SQLite wrote but that holds no table (a first write rolled back by a kill) is a new
    state file, not a foreign one."""
    db = tmp_path / "state.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    assert db.stat().st_size > 0
    agent = Agent(_backend(tmp_path / "c.jsonl"), runs_dir=tmp_path / "runs", checkpoint=db)
    agent.close()


def test_a_state_file_of_another_format_or_an_older_lladauni_is_refused(tmp_path):
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE checkpoints (x)")
        conn.execute("CREATE TABLE writes (x)")
    with pytest.raises(StateFileError, match="written by an older lladauni"):
        Agent(_backend(tmp_path / "c.jsonl"), checkpoint=old)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE lladauni_state AS SELECT 99 AS format")
    with pytest.raises(StateFileError, match="has state format 99, this lladauni reads format 1"):
        Agent(_backend(tmp_path / "c.jsonl"), checkpoint=other)


def test_request_fingerprints_tell_requests_apart():
    """The journal's key: equal requests (fresh but equal objects) get one fingerprint, and requests
    that differ anywhere (a pixel, a dtype, a field, a key, the nesting) get different ones."""
    import dataclasses
    import hashlib

    import numpy as np

    import torch
    from PIL import Image

    from lladauni.model_core.generation.prompts import ImageCodes

    @dataclasses.dataclass
    class Same:
        x: int
        y: int

    @dataclasses.dataclass
    class Other:  # the same fields, another class
        x: int
        y: int

    def named():
        @dataclasses.dataclass
        class Same:  # the same class name, other field names
            x: int
            z: int
        return Same

    Named = named()

    def fp(obj) -> str:
        h = hashlib.sha256()
        durable._fingerprint(obj, h)
        return h.hexdigest()

    def img(mode="RGB", size=(2, 2), value=0):
        return Image.new(mode, size, value if mode == "L" else (value, 0, 0))

    def requests():
        return [
            ["a fox", {"seed": 1, "steps": 8}], ["a fox", {"seed": 2, "steps": 8}], ["a fox", {"seed": 1, "step": 8}],
            ["a fox", {"seed": "1", "steps": 8}], ["a fox"], ["a fo", "x"], [["a"], ["b"]], [["a", "b"]], [[], ["a", "b"]],
            [{"a": [1]}], [{"a": 1}], [{"a": []}, 1], [{}], [[{}]],
            [torch.tensor([1, 2])], [torch.tensor([1, 3])], [torch.tensor([1, 2], dtype=torch.int32)],
            [torch.tensor([[1, 2]])], [torch.tensor([], dtype=torch.long)],
            [img()], [img(value=1)], [img(size=(2, 1))], [img(mode="L")],
            [ImageCodes(torch.tensor([1, 2]), 1, 2)], [ImageCodes(torch.tensor([1, 2]), 2, 1)],
            [None], [0], [False], [""], [ImageCodes],
            ["a", ["b"]], [["a"], "b"], [{"a": {"b": 1, "c": 2}}], [{"a": {"b": 1}, "c": 2}],
            [np.zeros(10_000)], [np.eye(1, 10_000, 5_000).ravel()], [np.zeros(10_000, dtype=np.float32)],
            [np.zeros((100, 100))], [Same(1, 2)], [Other(1, 2)], [Named(1, 2)],
            [Image.new("RGB", (4, 1))], [Image.new("RGB", (1, 4))], [Image.new("L", (12, 1))],  # the same 12 bytes
        ]

    first, again = [fp(r) for r in requests()], [fp(r) for r in requests()]
    assert first == again
    assert len(set(first)) == len(first), [r for r, f in zip(requests(), first) if first.count(f) > 1]


def test_a_journal_entry_with_damaged_tensor_bytes_is_not_trusted(tmp_path):
    import torch

    from lladauni.model_core.generation.results import ImageResult

    journal = durable.CallJournal(object(), tmp_path / "calls")
    slot = tmp_path / "calls" / "a.safetensors"
    journal._write(slot, ImageResult(torch.arange(64, dtype=torch.long) * 3, 8, 8))
    raw = bytearray(slot.read_bytes())
    raw[-5] ^= 0x01  # inside the codes tensor's data, past the header
    slot.write_bytes(bytes(raw))
    assert journal._read(slot) is durable._MISSING


def test_atomic_writes_create_their_folders_and_replace_whole_files(tmp_path):
    target = tmp_path / "a" / "b" / "run.json"
    durable.write_atomic(target, "first")
    durable.write_atomic(target, b"second")
    assert target.read_text() == "second" and sorted(p.name for p in target.parent.iterdir()) == ["run.json"]
