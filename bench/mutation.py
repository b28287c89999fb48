"""Mutation testing: plant one small bug at a time and check that the relevant tests notice.

    python -m bench.mutation                       # every target, writes bench/RESULTS.md
    python -m bench.mutation --target sampling     # one target
    python -m bench.mutation --list                # the mutants, without running them
    python -m bench.mutation --id 'ID' --show      # run one mutant and print its test output

The mutants are generated, not picked: every listed function of every target gets each operator
below wherever it applies (one mutant = one change). The list is deterministic, so a score is
comparable between runs; ``--list`` prints it. Mutants that cannot change behaviour are named in
``bench/mutation_equivalent.toml`` with the reason, and do not count.

Operators: arithmetic (``+ -``, ``* /``, ``// /``, ``% //``, ``** *``), comparison boundaries and
negations (``< <=``, ``> >=``, ``== !=``, ``is``/``is not``, ``in``/``not in``), ``and``/``or``,
dropping ``not`` and unary minus (not on a literal), integer constants +1 and -1, ``True``/``False``, 0.0/1.0,
``min``/``max``, ``round`` -> ``int``, ``math.ceil``/``math.floor``, ``.any``/``.all``,
``float64`` -> ``float32``, and deleting a statement that works by side effect (an assignment
into a subscript or attribute, an augmented assignment, a bare call). Error messages, docstrings,
logging, annotations and ``raise`` statements are left alone.

How a mutant runs: the parent process imports the heavy third-party modules once (torch,
transformers, ...) but nothing of ours, then forks a child per mutant. First, per target, a
baseline child runs the target's test files unmutated under a line tracer: they must pass, and the
trace says which tests execute which lines of the target. Then each mutant's child puts a finder
in front of ``sys.meta_path`` that serves the mutated module from the changed syntax tree, and runs
pytest in-process with ``-x`` on the tests that executed the mutated lines (all of the target's
tests for a change outside a function body, which runs at import). Exit 0 = survived; a failing
test, an import or collection error, or a timeout (3x the baseline + 30 s) = killed; no test
reaching the line = ``uncovered``, counted as survived. Tests that start a new Python process run
the unmutated code, so they cannot kill anything here (the score is a lower bound).
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime as dt
import importlib
import importlib.abc
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = Path(__file__).resolve().parent / "mutation_equivalent.toml"
OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Target:
    """A module to mutate (``functions``: qualified-name prefixes; empty = every function) and the
    tests that guard it."""

    name: str
    path: str  # repository-relative source file
    module: str  # its import name
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()


TARGETS: tuple[Target, ...] = (
    Target("sampling", "model_core/generation/sampling.py", "lladauni.model_core.generation.sampling",
           ("tests/test_sampling_filters.py", "tests/test_generation_oracles.py", "tests/test_generation_edges.py",
            "tests/test_sampler.py")),
    Target("sprint", "model_core/generation/sprint.py", "lladauni.model_core.generation.sprint",
           ("tests/test_generation_oracles.py", "tests/test_generation_edges.py", "tests/test_sampler.py")),
    Target("sampler", "model_core/generation/sampler.py", "lladauni.model_core.generation.sampler",
           ("tests/test_generation_oracles.py", "tests/test_generation_edges.py", "tests/test_sampler.py",
            "tests/test_sampler_naive.py", "tests/test_sampler_oracle.py", "tests/test_static_loop.py")),
    Target("static_loop", "model_core/generation/static_loop.py", "lladauni.model_core.generation.static_loop",
           ("tests/test_static_loop.py",)),
    Target("attention", "model_core/layers/attention.py", "lladauni.model_core.layers.attention",
           ("tests/test_layers.py", "tests/test_layers_edges.py", "tests/test_backbone.py",
            "tests/test_kernel_choice.py")),
    Target("rope", "model_core/layers/rope.py", "lladauni.model_core.layers.rope",
           ("tests/test_layers.py", "tests/test_backbone.py")),
    Target("norm", "model_core/layers/norm.py", "lladauni.model_core.layers.norm",
           ("tests/test_layers.py", "tests/test_backbone.py")),
    Target("mlp", "model_core/layers/mlp.py", "lladauni.model_core.layers.mlp",
           ("tests/test_layers.py", "tests/test_backbone.py")),
    Target("kernel_choice", "model_core/kernel_choice.py", "lladauni.model_core.kernel_choice",
           ("tests/test_kernel_choice.py", "tests/test_layers_edges.py")),
    Target("moe", "model_core/moe.py", "lladauni.model_core.moe",
           ("tests/test_moe.py", "tests/test_layers_edges.py", "tests/test_backbone.py",
            "tests/test_kernel_choice.py")),
    Target("image_preprocess", "model_core/image_preprocess.py", "lladauni.model_core.image_preprocess",
           ("tests/test_image_resize_oracles.py", "tests/test_image_preprocess_edges.py", "tests/test_image_preprocess.py",
            "tests/test_parity_crop.py", "tests/test_preprocess_fixed_size.py")),
    Target("decoder_samplers", "model_core/decoder/samplers.py", "lladauni.model_core.decoder.samplers",
           ("tests/test_decoder_samplers.py", "tests/test_decoder_samplers_edges.py", "tests/test_decoder.py")),
    Target("server_guard", "tools/http_auth.py", "lladauni.tools.http_auth",
           ("tests/test_tools_server_safety.py", "tests/test_server_guard_edges.py", "tests/test_tools_mcp.py"),
           ("is_loopback", "token_matches", "require_token", "Guard")),
    Target("image_refs", "tools/runtime.py", "lladauni.tools.runtime",
           ("tests/test_tools_server_safety.py", "tests/test_server_guard_edges.py", "tests/test_image_refs_edges.py",
            "tests/test_tools_server.py"),
           ("decode_image_bytes", "_under", "load_image_ref", "Limits")),
    Target("options", "model_core/options.py", "lladauni.model_core.options",
           ("tests/test_options_spine.py", "tests/test_pipeline.py")),
    Target("wire", "lladauni_agent/wire.py", "lladauni.agent.wire",
           ("tests/test_options_spine.py", "tests/test_sglang_contract.py", "tests/test_agent_backend.py",
            "tests/test_tools_server_safety.py")),
    Target("workflow_limits", "lladauni_agent/workflows/compiler.py", "lladauni.agent.workflows.compiler",
           ("tests/test_workflow_limits_edges.py", "tests/test_workflows_run.py", "tests/test_workflows_validation.py"),
           ("_positive_int", "_loop_nodes")),
    Target("workflow_steps", "lladauni_agent/workflows/runner.py", "lladauni.agent.workflows.runner",
           ("tests/test_workflow_limits_edges.py", "tests/test_workflows_run.py"), ("_step_bound",)),
    Target("state_file", "lladauni_agent/durable.py", "lladauni.agent.durable",
           ("tests/test_durability_kill.py",),
           ("open_state_db", "_check_state_db", "ChecksummedSerializer", "_fingerprint", "_encode", "_decode", "_digest",
            "CallJournal._read", "CallJournal._write", "write_atomic")),
    Target("front_door", "tools/http_limits.py", "lladauni.tools.http_limits",
           ("tests/test_hostile_http.py", "tests/test_server_guard_edges.py"),
           ("JsonDepth", "ConnectionRegistry", "ConnectionLimits", "no_delay")),
    Target("request_data", "tools/runtime.py", "lladauni.tools.runtime",
           ("tests/test_hostile_requests.py", "tests/test_image_refs_edges.py"),
           ("check_request_data", "_text_problem")),
)

PRELOAD = ("torch", "numpy", "PIL.Image", "safetensors.torch", "transformers", "tokenizers", "pytest", "yaml",
           "jinja2", "pydantic", "langgraph.graph", "starlette.applications", "fastapi", "httpx", "diffusers")

# ----------------------------------------------------------------------------- generating mutants
_BINOPS = {ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div], ast.Div: [ast.Mult],
           ast.FloorDiv: [ast.Div], ast.Mod: [ast.FloorDiv], ast.Pow: [ast.Mult]}
_CMPOPS = {ast.Lt: [ast.LtE], ast.LtE: [ast.Lt], ast.Gt: [ast.GtE], ast.GtE: [ast.Gt], ast.Eq: [ast.NotEq],
           ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot], ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In]}
_NAME_SWAPS = {"min": "max", "max": "min", "round": "int"}
_ATTR_SWAPS = {"ceil": "floor", "floor": "ceil", "any": "all", "all": "any", "float64": "float32"}
_SKIP_CALLS = {"warn", "warning", "info", "debug", "error", "exception", "log", "report_once"}


@dataclass(frozen=True)
class Mutant:
    id: str
    target: str
    index: int  # position of the node in ast.walk order of the freshly parsed module
    op: str  # what to do to that node
    arg: str  # operator / constant / name the node becomes
    line: int
    before: str
    after: str
    lines: Optional[tuple[int, ...]] = None  # source lines whose tests can see it; None = every test


def _qualnames(tree: ast.Module) -> Iterator[tuple[str, ast.AST]]:
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                q = f"{prefix}{child.name}"
                yield q, child
                yield from walk(child, q + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _excluded_ids(func: ast.AST) -> set[int]:
    """Nodes never mutated: docstrings, annotations, decorators, raise/assert, f-strings, logging."""
    skip: set[int] = set()

    def mark(n: Optional[ast.AST]) -> None:
        if n is not None:
            skip.update(id(x) for x in ast.walk(n))

    for n in ast.walk(func):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in n.decorator_list:
                mark(d)
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant):
                mark(n.body[0])
            if not isinstance(n, ast.ClassDef):
                mark(n.returns)
                for a in [*n.args.args, *n.args.kwonlyargs, *n.args.posonlyargs, n.args.vararg, n.args.kwarg]:
                    if a is not None:
                        mark(a.annotation)
        elif isinstance(n, ast.AnnAssign):
            mark(n.annotation)
        elif isinstance(n, (ast.Raise, ast.Assert, ast.JoinedStr)):
            mark(n)
        elif isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in _SKIP_CALLS:
                mark(n)
    return skip


def _side_effect_stmt(n: ast.AST) -> bool:
    if isinstance(n, ast.AugAssign):
        return True
    if isinstance(n, ast.Assign):
        return all(isinstance(t, (ast.Subscript, ast.Attribute)) for t in n.targets)
    return isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)


def _candidates(node: ast.AST) -> list[tuple[str, str]]:
    """(op, arg) mutations that apply to this node."""
    out: list[tuple[str, str]] = []
    if isinstance(node, ast.BinOp):
        out += [("binop", new.__name__) for new in _BINOPS.get(type(node.op), [])]
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            out += [(f"cmp{i}", new.__name__) for new in _CMPOPS.get(type(op), [])]
    elif isinstance(node, ast.BoolOp):
        out.append(("boolop", "Or" if isinstance(node.op, ast.And) else "And"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        # a negative literal (dim=-1, [..., -1]) is left to the constant operator: -1 -> 1 is the
        # same axis on the 2-D tensors these functions take, so it would only add equivalent mutants
        if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):
            out.append(("drop_unary", ""))
    elif isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            out.append(("const", repr(not v)))
        elif isinstance(v, int):
            out.append(("const", repr(v + 1)))
            if v != 0:
                out.append(("const", repr(v - 1)))
        elif isinstance(v, float) and v in (0.0, 1.0):
            out.append(("const", repr(1.0 - v)))
    elif isinstance(node, ast.Name) and node.id in _NAME_SWAPS and isinstance(node.ctx, ast.Load):
        out.append(("name", _NAME_SWAPS[node.id]))
    elif isinstance(node, ast.Attribute) and node.attr in _ATTR_SWAPS and isinstance(node.ctx, ast.Load):
        out.append(("attr", _ATTR_SWAPS[node.attr]))
    if _side_effect_stmt(node):
        out.append(("delete", ""))
    return out


def _change(node: ast.AST, op: str, arg: str) -> ast.AST:
    """Apply one mutation to ``node``; returns what stands in its place (the node itself, edited,
    or a replacement: the operand of a dropped unary, ``pass`` for a deleted statement)."""
    if op in ("binop", "boolop"):
        node.op = getattr(ast, arg)()
    elif op.startswith("cmp"):
        node.ops[int(op[3:])] = getattr(ast, arg)()
    elif op == "const":
        node.value = ast.literal_eval(arg)
    elif op == "name":
        node.id = arg
    elif op == "attr":
        node.attr = arg
    elif op == "drop_unary":
        return node.operand
    elif op == "delete":
        return ast.Pass()
    else:
        raise ValueError(op)
    return node


def _apply(tree: ast.Module, index: int, op: str, arg: str) -> None:
    """Mutate node ``index`` (ast.walk order) of ``tree`` in place."""
    nodes = list(ast.walk(tree))
    node = nodes[index]
    new = _change(node, op, arg)
    if new is node:
        return
    for parent in nodes:
        for fname, value in ast.iter_fields(parent):
            if value is node:
                setattr(parent, fname, new)
                return
            if isinstance(value, list) and any(v is node for v in value):
                value[[i for i, v in enumerate(value) if v is node][0]] = new
                return
    raise RuntimeError("node without a parent")


def _segment(source: str, node: ast.AST) -> str:
    seg = ast.get_source_segment(source, node) or ast.unparse(node)
    seg = " ".join(seg.split())
    return seg if len(seg) <= 90 else seg[:87] + "..."


def _runtime_lines(tree: ast.Module) -> dict[int, tuple[int, ...]]:
    """For each node that runs inside a function body: the traced lines that show it ran (its
    innermost statement's first line and its own lines). Nodes outside bodies (defaults, class
    attributes, decorators) run at import, so no line event ties them to a test: absent here."""
    out: dict[int, tuple[int, ...]] = {}

    def visit_body(stmts: list[ast.stmt]) -> None:
        for st in stmts:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue  # a nested def's body is visited on its own below; a class body runs at import
            for n in _own_nodes(st):
                if hasattr(n, "lineno"):
                    out[id(n)] = tuple(sorted({st.lineno, *range(n.lineno, (n.end_lineno or n.lineno) + 1)}))
            blocks = [getattr(st, f, []) for f in ("body", "orelse", "finalbody")]
            blocks += [h.body for h in getattr(st, "handlers", [])] + [c.body for c in getattr(st, "cases", [])]
            for block in blocks:
                visit_body(block)

    def _own_nodes(st: ast.stmt) -> Iterator[ast.AST]:
        """The statement and the expressions it owns (not nested statements)."""
        yield st
        stack = [c for c in ast.iter_child_nodes(st) if not isinstance(c, (ast.stmt, ast.excepthandler))]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(c for c in ast.iter_child_nodes(n) if not isinstance(c, ast.stmt))

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            visit_body(node.body)
    return out


def generate(target: Target) -> list[Mutant]:
    source = (ROOT / target.path).read_text()
    tree = ast.parse(source)
    index_of = {id(n): i for i, n in enumerate(ast.walk(tree))}
    body_lines = _runtime_lines(tree)
    chosen: dict[int, tuple[str, int, ast.AST]] = {}  # outermost matching function owns a node
    for q, fn in _qualnames(tree):
        if isinstance(fn, ast.ClassDef):
            if q not in target.functions:  # a class is mutated whole only when named
                continue
        elif target.functions and not any(q == f or q.startswith(f + ".") for f in target.functions):
            continue
        skip = _excluded_ids(fn)
        for n in ast.walk(fn):
            if id(n) in skip or id(n) in chosen:
                continue
            chosen[id(n)] = (q, fn.lineno, n)
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for nid, (q, fn_line, n) in sorted(chosen.items(), key=lambda kv: index_of[kv[0]]):
        for op, arg in _candidates(n):
            before = _segment(source, n)
            new = _change(copy.deepcopy(n), op, arg)
            after = "pass  # deleted" if op == "delete" else " ".join(ast.unparse(new).split())
            if len(before) < 16 and op != "delete":  # a bare constant or name: show its line around it
                line = " ".join(source.splitlines()[n.lineno - 1].split())
                before, after = line[:90], f"[{before} -> {after}]"
            mid = f"{target.name}:{q}:+{n.lineno - fn_line}:{n.col_offset}:{op}:{arg}"
            if mid in seen:
                continue
            seen.add(mid)
            mutants.append(Mutant(mid, target.name, index_of[nid], op, arg, n.lineno, before, after[:90],
                                  body_lines.get(nid)))
    return mutants


# ----------------------------------------------------------------------------- running mutants
class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, module: str, path: Path, code) -> None:
        self.module, self.path, self.code = module, path, code

    def find_spec(self, name, path=None, target=None):
        if name != self.module:
            return None
        return importlib.util.spec_from_file_location(name, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(self.code, module.__dict__)


class _LineMap:
    """pytest plugin + tracer for the baseline run: which tests execute which lines of one file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.current = ""
        self.order: list[str] = []
        self.hits: dict[int, set[str]] = {}
        self.durations: dict[str, float] = {}

    def pytest_collection_finish(self, session) -> None:
        self.order = [item.nodeid for item in session.items]

    def pytest_runtest_setup(self, item) -> None:
        self.current = item.nodeid

    def pytest_runtest_logreport(self, report) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def _local(self, frame, event, arg):
        if event == "line":
            self.hits.setdefault(frame.f_lineno, set()).add(self.current)
        return self._local

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename == self.filename:
            self.hits.setdefault(frame.f_lineno, set()).add(self.current)
            return self._local
        return None

    def install(self) -> None:
        import threading

        threading.settrace(self._global)
        sys.settrace(self._global)

    def dump(self, path: str) -> None:
        sys.settrace(None)
        # fastest first: with -x a killed mutant stops at its first failing test
        order = sorted(self.order, key=lambda t: self.durations.get(t, 0.0))
        data = {"order": order, "hits": {str(k): sorted(v) for k, v in self.hits.items()}}
        Path(path).write_text(json.dumps(data))


def _child(target: Target, mutant: Optional[Mutant], log: str, threads: int, tests: Optional[list[str]],
           linemap: Optional[str]) -> None:
    """In the forked child: install the mutant (or, for the baseline, the line tracer), run pytest
    on ``tests`` (node ids; None = the target's files), exit with its status."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        import torch

        torch.set_num_threads(threads)
        path = ROOT / target.path
        plugins = []
        if mutant is not None:
            tree = ast.parse(path.read_text())
            _apply(tree, mutant.index, mutant.op, mutant.arg)
            ast.fix_missing_locations(tree)
            code = compile(tree, str(path), "exec")
            sys.meta_path.insert(0, _MutantFinder(target.module, path, code))
        tracer = None
        if linemap is not None:
            tracer = _LineMap(str(path))
            tracer.install()
            plugins.append(tracer)
        import pytest

        args = tests if tests is not None else [t for t in target.tests if (ROOT / t).exists()]
        os.chdir(ROOT)
        rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *args], plugins=plugins)
        if tracer is not None:
            tracer.dump(linemap)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc))
    except BaseException as exc:  # a mutant that breaks the import machinery still counts as killed
        os.write(2, f"runner child error: {exc!r}\n".encode())
        os._exit(99)


@dataclass
class _Running:
    pid: int
    start: float
    target: Target
    mutant: Optional[Mutant]
    log: str


@dataclass
class Outcome:
    status: str  # killed / survived / timeout / baseline_failed
    seconds: float
    rc: int
    log: str = ""


def _reap(running: list[_Running], timeouts: dict[str, float]) -> Iterator[tuple[_Running, Outcome]]:
    """One pass over the running children: yield those that finished or ran out of time."""
    for r in list(running):
        pid, status = os.waitpid(r.pid, os.WNOHANG)
        elapsed = time.monotonic() - r.start
        if pid == 0:
            if elapsed > timeouts[r.target.name]:
                try:
                    os.killpg(r.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(r.pid, 0)
                running.remove(r)
                yield r, Outcome("timeout", elapsed, -9, r.log)
            continue
        running.remove(r)
        try:
            os.killpg(r.pid, signal.SIGKILL)  # stray grandchildren
        except (ProcessLookupError, PermissionError):
            pass
        rc = os.waitstatus_to_exitcode(status)
        yield r, Outcome("survived" if rc == 0 else "killed", elapsed, rc, r.log)


def _select(mutant: Mutant, linemap: dict) -> Optional[list[str]]:
    """The baseline's tests that execute the mutant's lines, fastest first (all for a
    mutant outside any function body). [] = no test runs that code."""
    if mutant.lines is None:
        return list(linemap["order"])
    hit: set[str] = set()
    for line in mutant.lines:
        hit.update(linemap["hits"].get(str(line), ()))
    return [t for t in linemap["order"] if t in hit]


def run(targets: list[Target], mutants: list[Mutant], jobs: int, logdir: Path, progress=print,
        journal: Optional[Path] = None) -> dict[str, Outcome]:
    """Baseline each target (it must pass unmutated; it also maps lines to tests), then every
    mutant on the tests that reach it; returns id -> Outcome. Every outcome is also appended to
    ``journal`` (one JSON line), so an interrupted run can be resumed with ``--reuse``."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    by_name = {t.name: t for t in targets}
    results: dict[str, Outcome] = {}
    timeouts = {t.name: 1e9 for t in targets}
    pending: list[tuple[Target, Optional[Mutant]]] = [(t, None) for t in targets]
    pending += [(by_name[m.target], m) for m in mutants]
    running: list[_Running] = []
    linemaps: dict[str, Optional[dict]] = {}
    done = 0
    total = len(mutants)

    def finished(m: Mutant, out: Outcome) -> None:
        nonlocal done
        results[m.id] = out
        done += 1
        if journal is not None:
            with journal.open("a") as fh:
                fh.write(json.dumps({"id": m.id, "target": m.target, "status": out.status}) + "\n")
        if out.status in ("survived", "uncovered"):
            progress(f"[{done}/{total}] {out.status.upper()} {m.id}  L{m.line}: {m.before}  ->  {m.after}")
        elif done % 25 == 0:
            progress(f"[{done}/{total}] ...")

    while pending or running:
        i = 0
        while i < len(pending) and len(running) < jobs:
            t, m = pending[i]
            if m is not None and t.name not in linemaps:
                i += 1  # wait for this target's baseline; others may go ahead
                continue
            pending.pop(i)
            tests = None
            if m is not None:
                if linemaps[t.name] is None:
                    finished(m, Outcome("baseline_failed", 0.0, -1))
                    continue
                tests = _select(m, linemaps[t.name])
                if not tests:
                    finished(m, Outcome("uncovered", 0.0, 0))
                    continue
            log = str(logdir / (f"{t.name}.baseline.log" if m is None else f"{abs(hash(m.id))}.log"))
            lm = str(logdir / f"{t.name}.lines.json") if m is None else None
            pid = os.fork()
            if pid == 0:
                _child(t, m, log, threads, tests, lm)
            running.append(_Running(pid, time.monotonic(), t, m, log))
        for r, out in _reap(running, timeouts):
            if r.mutant is None:
                ok = out.status == "survived"
                lm_path = logdir / f"{r.target.name}.lines.json"
                linemaps[r.target.name] = json.loads(lm_path.read_text()) if ok and lm_path.exists() else None
                timeouts[r.target.name] = 3 * out.seconds + 30
                progress(f"baseline {r.target.name}: {'passes' if ok else 'FAILS (see ' + r.log + ')'} in {out.seconds:.1f} s")
            else:
                finished(r.mutant, out)
        if running:
            time.sleep(0.05)
    return results


# ----------------------------------------------------------------------------- reporting
def load_equivalent(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    if not path.exists():
        return {}
    return dict(tomllib.loads(path.read_text()).get("equivalent", {}))


def summarise(targets: list[Target], mutants: list[Mutant], results: dict[str, Outcome], equivalent: dict[str, str]) -> dict:
    rows = {}
    for t in targets:
        ms = [m for m in mutants if m.target == t.name]
        eq = [m for m in ms if m.id in equivalent]
        live = [m for m in ms if m.id not in equivalent and m.id in results]
        killed = [m for m in live if results[m.id].status in ("killed", "timeout")]
        survived = [m for m in live if results[m.id].status in ("survived", "uncovered")]
        broken = [m for m in live if results[m.id].status == "baseline_failed"]
        rows[t.name] = {
            "path": t.path, "mutants": len(ms), "equivalent": len(eq), "killed": len(killed),
            "timeouts": sum(results[m.id].status == "timeout" for m in live), "survived": [m.id for m in survived],
            "uncovered": sum(results[m.id].status == "uncovered" for m in live),
            "baseline_failed": len(broken),
            "score": (len(killed) / len(live)) if live else None,
            "seconds": round(sum(results[m.id].seconds for m in live), 1),
        }
    return rows


def _load_previous(path: Path) -> dict:
    """A results JSON, or the journal of an interrupted run (its sources are the current ones:
    resume only without editing the targets in between)."""
    if path.suffix != ".jsonl":
        return json.loads(path.read_text())
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"date": dt.date.fromtimestamp(path.stat().st_mtime).isoformat(),
            "sources": {t.name: source_hash(t) for t in TARGETS},
            "mutants": {r["id"]: {"status": r["status"]} for r in rows}}


def source_hash(target: Target) -> str:
    import hashlib

    return hashlib.sha256((ROOT / target.path).read_bytes()).hexdigest()


def markdown(rows: dict, mutants: list[Mutant], equivalent: dict[str, str], seconds: float, jobs: int,
             reused: int = 0, reused_from: str = "") -> str:
    by_id = {m.id: m for m in mutants}
    total_live = sum(r["mutants"] - r["equivalent"] for r in rows.values())
    total_killed = sum(r["killed"] for r in rows.values())
    lines = [
        "## Mutation score: generated one-line bugs that the relevant tests catch",
        "",
        "`make mutation` (bench/mutation.py): every operator applied to every listed function, one change per "
        "mutant, each run against its module's tests with `-x`; killed = a test fails (or the run times out). "
        "Equivalent mutants (no behaviour change possible) are listed with the reason in "
        "bench/mutation_equivalent.toml and not counted.",
        "",
        "| module | file | mutants | equivalent | killed | survived (of which no test reaches the line) | score |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        score = "n/a" if r["score"] is None else f"{100 * r['score']:.1f}%"
        if r["baseline_failed"]:
            score += f" ({r['baseline_failed']} not run: baseline failed)"
        lines.append(f"| {name} | `{r['path']}` | {r['mutants']} | {r['equivalent']} | {r['killed']} | "
                     f"{len(r['survived'])} ({r['uncovered']}) | {score} |")
    overall = f"{100 * total_killed / total_live:.1f}%" if total_live else "n/a"
    lines += ["", f"Overall: {total_killed} of {total_live} non-equivalent mutants killed ({overall}); "
              f"{sum(r['equivalent'] for r in rows.values())} equivalent. Wall time {seconds / 60:.1f} min with {jobs} "
              f"workers" + (f"; {reused} killed outcomes kept from the full run of {reused_from} (same sources; "
                            f"tests only added since)" if reused else "") + ".", ""]
    survivors = [sid for r in rows.values() for sid in r["survived"]]
    if survivors:
        lines += ["Surviving mutants (each is a behaviour change the tests do not notice):", ""]
        for sid in survivors:
            m = by_id[sid]
            lines.append(f"- `{rows[m.target]['path']}` line {m.line}: `{m.before}` -> `{m.after}`")
        lines.append("")
    stamp = f"_Measured {dt.date.today().isoformat()} on {os.cpu_count()} CPU cores._"
    return "\n".join(lines + [stamp, ""])


def _preload() -> None:
    import torch

    if not torch.cuda.is_available():
        # the kernel tests run Triton in its CPU interpreter; the switch must be set before anything
        # (diffusers, below) imports triton, or every interpreted launch fails in the children
        os.environ.setdefault("TRITON_INTERPRET", "1")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an extra that is not installed: its tests skip or fail in the baseline
            pass
    leaked = [m for m in sys.modules if m == "lladauni" or m.startswith("lladauni.")]
    if leaked:
        raise RuntimeError(f"the runner must not import our modules before forking: {leaked[:3]}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", action="append", choices=[t.name for t in TARGETS], help="run only these targets")
    ap.add_argument("--id", action="append", help="run only these mutant ids")
    ap.add_argument("--reuse", type=Path, action="append", help="keep the killed outcomes of this earlier results "
                    "JSON or journal (only for targets whose source is unchanged; adding tests cannot revive a killed "
                    "mutant) and run the rest; may be given several times")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--show", action="store_true", help="print each run's test output")
    ap.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args(argv)

    every = {t.name: generate(t) for t in TARGETS}
    targets = [t for t in TARGETS if not args.target or t.name in args.target]
    mutants = [m for t in targets for m in every[t.name]]
    if args.id:
        mutants = [m for m in mutants if m.id in args.id]
        targets = [t for t in targets if any(m.target == t.name for m in mutants)]
    reused: dict[str, Outcome] = {}
    reused_from = ""
    dates: set[str] = set()
    for path in args.reuse or []:
        prev = _load_previous(path)
        same = {t.name for t in targets if prev.get("sources", {}).get(t.name) == source_hash(t)}
        got = {m.id: Outcome(prev["mutants"][m.id]["status"], 0.0, 1) for m in mutants
               if m.target in same and prev["mutants"].get(m.id, {}).get("status") in ("killed", "timeout")}
        reused.update(got)
        dates.add(prev.get("date", "?"))
        print(f"reusing {len(got)} killed outcomes from {path} ({prev.get('date', '?')}) for "
              f"{sorted(same & {m.target for m in mutants if m.id in prev['mutants']})}")
    reused_from = ", ".join(sorted(dates))
    equivalent = load_equivalent()
    unknown = sorted(set(equivalent) - {m.id for ms in every.values() for m in ms})
    if unknown:
        print(f"warning: {len(unknown)} ids in {EQUIVALENT_FILE.name} match no mutant (stale?): {unknown[:5]}")
    if args.list:
        for m in mutants:
            eq = "  [equivalent]" if m.id in equivalent else ""
            print(f"{m.id}\n    L{m.line}: {m.before}  ->  {m.after}{eq}", flush=True)
        print(f"{len(mutants)} mutants over {len(targets)} targets")
        return 0
    to_run = [m for m in mutants if m.id not in equivalent and m.id not in reused]
    print(f"{len(to_run)} mutants to run ({sum(m.id in equivalent for m in mutants)} marked equivalent, "
          f"{len(reused)} kept) over {len(targets)} targets, "
          f"{args.jobs} workers", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    # one tiny checkpoint for every child (tests/conftest.py reuses it when this is set)
    ckpt_dir = Path(tempfile.mkdtemp(prefix="lladauni-mutation-"))
    import subprocess

    subprocess.run([sys.executable, "-c", "import sys; from lladauni.model_core.testing import make_tiny_checkpoint; "
                    "make_tiny_checkpoint(sys.argv[1], seed=0)", str(ckpt_dir / "tiny")], check=True, cwd=ROOT)
    os.environ["LLADAUNI_TEST_TINY_CKPT"] = str(ckpt_dir / "tiny")
    _preload()
    logdir = ckpt_dir / "logs"
    logdir.mkdir()
    t0 = time.monotonic()
    run_targets = [t for t in targets if any(m.target == t.name for m in to_run)]
    OUT.mkdir(exist_ok=True)
    # the journal of a whole run lives in bench/out (resumable); partial runs keep theirs private
    journal = OUT / "mutation-journal.jsonl" if not (args.id or args.target) else logdir / "journal.jsonl"
    journal.write_text("")
    results = run(run_targets, to_run, args.jobs, logdir, progress=lambda s: print(s, flush=True), journal=journal)
    results.update(reused)
    seconds = time.monotonic() - t0
    if args.show:
        for m in to_run:
            out = results.get(m.id)
            if out is not None and out.log and Path(out.log).exists():
                print(f"===== {m.id}: {out.status}\n{Path(out.log).read_text()[-4000:]}")
    rows = summarise(targets, mutants, results, equivalent)
    for name, r in rows.items():
        score = "n/a" if r["score"] is None else f"{100 * r['score']:.1f}%"
        print(f"{name:18s} {r['killed']:4d} killed  {len(r['survived']):3d} survived  {r['equivalent']:3d} equivalent  "
              f"score {score}  ({r['seconds']:.0f} s of test time)")
    OUT.mkdir(exist_ok=True)
    full = not (args.id or args.target)
    report = {"date": dt.date.today().isoformat(), "seconds": round(seconds, 1), "jobs": args.jobs, "modules": rows,
              "sources": {t.name: source_hash(t) for t in targets}, "reused": len(reused), "reused_from": reused_from,
              "mutants": {m.id: {"line": m.line, "before": m.before, "after": m.after,
                                 "status": results[m.id].status if m.id in results else "equivalent"} for m in mutants}}
    name = "mutation.json" if full else f"mutation-partial-{os.getpid()}.json"
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / name}")
    if full and not args.no_write:
        from bench._results import update_sections

        update_sections([markdown(rows, mutants, equivalent, seconds, args.jobs, len(reused), reused_from)])
        print("updated bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
