"""Load a workflow file: parse YAML with positions, validate with pydantic, then check the graph
and every template. Problems come back together as ``WorkflowError`` whose lines read
``file:line:column: key: message (hint: ...)``; nothing runs when there is one.

The work a file can ask for is bounded (``WorkflowLimits``): its size (checked before it is
read), its nesting depth and the number of values once aliases are expanded (counted while
PyYAML parses, so a billion-laughs file or one nested 20,000 deep stops at the limit), and an
alias inside the collection it names is refused. A file that is not UTF-8 text is refused where
its first bad byte is. ``check_inputs`` checks a run's inputs against the declared types.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from . import schema as S
from .functions import registered_functions
from .schema import WorkflowLimitError, WorkflowLimits
from .templates import check as check_template, is_template

__all__ = ["Issue", "WorkflowError", "Workflow", "load_workflow", "loads_workflow", "bundled_dir", "bundled_workflows",
           "did_you_mean", "check_inputs", "TRUE_WORDS", "FALSE_WORDS", "model_problem", "FULL_MODEL_ONLY"]


@functools.lru_cache(maxsize=None)
def bundled_dir() -> Path:
    """The folder of the bundled workflows: the ``lladauni.workflows`` data package (the
    repository's ``workflows/``), found through the import system so that an editable install,
    a wheel and a plain checkout all answer the same."""
    pkg = importlib.import_module("lladauni.workflows")
    for entry in pkg.__path__:
        if Path(entry).is_dir() and any(Path(entry).glob("*.yaml")):
            return Path(entry)
    raise FileNotFoundError(f"the bundled workflows are missing from this install (lladauni.workflows: {list(pkg.__path__)})")


_NODE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
Pos = tuple[int, int]
Path_ = tuple[Union[str, int], ...]


@dataclass(frozen=True)
class Issue:
    file: str
    line: int
    column: int
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.file}:{self.line}:{self.column}: {self.key or '<top>'}: {self.message}{hint}"


class WorkflowError(ValueError):
    """Validation failed; ``issues`` lists every problem found (file, line, column, key, message, hint)."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass
class Workflow:
    """A validated workflow: the spec, where it came from, and its loaded sub-workflows;
    ``limits`` bound its templates when it runs; ``positions`` and ``blocks`` say where each
    value is written (line, column) and, for a ``|`` block, the column its lines start at."""

    spec: S.WorkflowSpec
    source: str
    base_dir: Path
    children: dict[str, "Workflow"] = field(default_factory=dict)
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    limits: WorkflowLimits = field(default_factory=WorkflowLimits)
    positions: dict[Path_, Pos] = field(default_factory=dict)
    blocks: dict[Path_, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def where(self, path: Path_, template_line: Optional[int] = None) -> str:
        """``file:line:col: key`` of the value at ``path`` (of line ``template_line`` of its template)."""
        line, col = template_position(self.positions, self.blocks, path, template_line)
        exact = template_line is None or template_line <= 1 or path in self.blocks
        return f"{self.source}:{line}:{col}: {_dotted(path)}" + ("" if exact else f" (template line {template_line})")

    def check_inputs(self, inputs: Optional[Mapping[str, Any]]) -> None:
        """Check a run's inputs against this workflow's declared inputs (``check_inputs``)."""
        check_inputs(self, inputs)


def bundled_workflows() -> dict[str, Path]:
    """Name -> path of the workflows shipped in the repository's ``workflows/`` directory."""
    return {p.stem: p for p in sorted(bundled_dir().glob("*.yaml"))}


# ---------------------------------------------------------------------------------- positions
def template_position(positions: Mapping[Path_, Pos], blocks: Mapping[Path_, int], path: Path_,
                      template_line: Optional[int]) -> Pos:
    """Where line ``template_line`` of the template at ``path`` is in the file: exact in a ``|``
    block (its lines are the template's), else where the value starts."""
    p = tuple(path)
    while p and p not in positions:
        p = p[:-1]
    line, col = positions.get(p, (1, 1))
    if template_line and p == tuple(path) and p in blocks:
        return line + template_line, blocks[p]
    return line, col


class _YamlLimit(Exception):
    def __init__(self, mark: Any, message: str, hint: str) -> None:
        super().__init__(message)
        self.mark, self.message, self.hint = mark, message, hint


class _CountingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting the events as the composer takes them: nesting depth,
    values once every alias is expanded, and aliases to a collection still open (recursive).
    It stops at the first limit passed, before the composer (which recurses) goes deeper."""

    def __init__(self, text: str, limits: WorkflowLimits) -> None:
        super().__init__(text)
        self.limits = limits
        self.open: list[list] = []  # [anchor, values inside] of each collection being read
        self.sizes: dict[str, int] = {}  # anchor -> values it stands for, expanded
        self.total = 0

    def _stop(self, event: Any, exc: WorkflowLimitError) -> None:
        raise _YamlLimit(event.start_mark, exc.problem, exc.hint)

    def get_event(self) -> Any:
        event = super().get_event()
        if isinstance(event, yaml.CollectionEndEvent) and self.open:
            anchor, size = self.open.pop()
            if anchor is not None:
                self.sizes[anchor] = size
            if self.open:
                self.open[-1][1] += size
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            n = 1
            if isinstance(event, yaml.AliasEvent):
                if any(a == event.anchor for a, _ in self.open):
                    raise _YamlLimit(event.start_mark, f"recursive alias '*{event.anchor}': it stands for a collection "
                                                       "that contains it", "an alias may only repeat a finished value")
                n = self.sizes.get(event.anchor, 1)
            self.total += n
            if self.total > self.limits.max_nodes:
                self._stop(event, self.limits.exceeded("max_nodes", self.total, "values once aliases are expanded"))
            if isinstance(event, yaml.CollectionStartEvent):
                self.open.append([event.anchor, 1])
                if len(self.open) > self.limits.max_depth:
                    self._stop(event, self.limits.exceeded("max_depth", len(self.open), "levels of nesting"))
            elif self.open:
                self.open[-1][1] += n
            if isinstance(event, yaml.ScalarEvent) and event.anchor is not None:
                self.sizes[event.anchor] = 1
        return event

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's, with a value it cannot construct (``!!int abc``, a 5,000-digit integer, a
        timestamp with no such month) reported where it is, as a YAML error."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors raise what their parsing raises
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value as {node.tag.rsplit(':', 1)[-1]}: "
                                                    f"{type(exc).__name__}: {str(exc)[:120]}", node.start_mark) from None


def _text_issue(label: str, text: str, index: int, message: str, hint: str) -> Issue:
    """An issue at character ``index`` of ``text``."""
    before = text[:index]
    line = before.count("\n") + 1
    return Issue(label, line, index - (before.rfind("\n") + 1) + 1, "", message, hint)


class _Doc:
    """Parsed YAML plus the line:column of every value and mapping key (1-based), and the column
    where the lines of each ``|`` block start."""

    def __init__(self, text: str, label: str, limits: WorkflowLimits) -> None:
        self.label = label
        self.values: dict[Path_, Pos] = {}
        self.keys: dict[Path_, Pos] = {}
        self.blocks: dict[Path_, int] = {}
        self.issues: list[Issue] = []
        self.data: Any = None
        self.lines = text.splitlines()
        if "\x00" in text:
            self.issues.append(_text_issue(label, text, text.index("\x00"), "the file holds NUL bytes: a binary file, "
                                           "not YAML text", "a workflow is a UTF-8 YAML text file"))
            return
        node = self._compose(text, limits)
        if node is not None:
            self._walk(node, ())

    def _compose(self, text: str, limits: WorkflowLimits) -> Optional[yaml.Node]:
        label = self.label
        loader = None
        try:
            loader = _CountingLoader(text, limits)  # PyYAML checks the characters here
            node = loader.get_single_node()
            if node is None:
                self.issues.append(Issue(label, 1, 1, "", "the file is empty", "start with 'version: 1'"))
                return None
            self.data = loader.construct_document(node)
            return node
        except _YamlLimit as exc:
            self.issues.append(Issue(label, exc.mark.line + 1, exc.mark.column + 1, "", exc.message, exc.hint))
        except yaml.reader.ReaderError as exc:
            self.issues.append(_text_issue(label, text, exc.position, f"control character #x{exc.character:04x} in the "
                                           "text (a binary file?)", "remove it, or write it as an escape in a quoted string"))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            self.issues.append(Issue(label, line, col, "", f"YAML syntax error: {exc.problem or exc}", exc.context or ""))
        except yaml.YAMLError as exc:
            self.issues.append(Issue(label, 1, 1, "", f"YAML error: {exc}"))
        finally:
            if loader is not None:
                loader.dispose()
        return None

    def _walk(self, node: yaml.Node, path: Path_) -> None:
        self.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode) and node.style == "|" and node.start_mark.line + 1 < len(self.lines):
            first = self.lines[node.start_mark.line + 1]
            self.blocks[path] = len(first) - len(first.lstrip(" ")) + 1
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                if key in seen:
                    self.issues.append(Issue(self.label, k.start_mark.line + 1, k.start_mark.column + 1,
                                             _dotted(path + (key,)), f"duplicate key '{key}'", "YAML keeps only the last one; remove one of them"))
                seen.add(key)
                self.keys[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
                self._walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, path + (i,))

    def at(self, path: Path_, *, key: bool = False) -> Pos:
        """Position of ``path`` (its key when ``key``), or of the nearest ancestor that exists."""
        p = tuple(path)
        while True:
            if key and p in self.keys:
                return self.keys[p]
            if not key and p in self.values:
                return self.values[p]
            if not p:
                return (1, 1)
            p = p[:-1]
            key = bool(p) and p in self.keys

    def issue(self, path: Path_, message: str, hint: str = "", *, key: bool = False, template_line: Optional[int] = None) -> Issue:
        line, col = self.at(path, key=key)
        if template_line is not None and not key:
            line, col = template_position(self.values, self.blocks, path, template_line)
        return Issue(self.label, line, col, _dotted(path), message, hint)


def _dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def did_you_mean(word: Any, choices: list[str]) -> str:
    """A hint: the closest of ``choices`` to ``word``, or the list of them."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(map(str, choices))}"


# --------------------------------------------------------------------------- pydantic errors
_NODE_MODELS: dict[str, type[BaseModel]] = {
    m.model_fields["kind"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (S.ThinkNode, S.DrawNode, S.EditNode, S.InspectNode, S.DecodeNode, S.EncodeNode, S.InterleaveNode,
              S.RouterNode, S.LoopNode, S.SubworkflowNode, S.CallNode)
}
_OPTIONS = {"think": S.TextOptions, "inspect": S.TextOptions, "draw": S.ImageOptions, "edit": S.EditOptions,
            "interleave": S.InterleavedOptions}


def _model_at(path: Path_, data: Any) -> Optional[type[BaseModel]]:
    """The model that validates the mapping at ``path`` (to suggest the keys it accepts)."""
    if path == ():
        return S.WorkflowSpec
    if len(path) == 2 and path[0] == "inputs":
        return S.InputSpec
    if path == ("backend",):
        return S.BackendSpec
    if len(path) == 2 and path[0] == "backend":
        return {"text": S.TextOptions, "image": S.ImageOptions, "edit": S.EditOptions, "interleaved": S.InterleavedOptions}.get(str(path[1]))
    if len(path) >= 2 and path[0] == "nodes":
        node = data.get("nodes", {}).get(path[1]) if isinstance(data.get("nodes"), dict) else None
        kind = node.get("kind") if isinstance(node, dict) else None
        if len(path) == 2:
            return _NODE_MODELS.get(kind)
        if len(path) == 3 and path[2] == "options":
            return _OPTIONS.get(kind)
        if len(path) == 4 and path[2] == "routes":
            return S.Route
    return None


def _locate(data: Any, loc: tuple) -> Path_:
    """Map a pydantic error location onto the data path (dropping union tags and the like)."""
    path: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
    return tuple(path)


def _pydantic_issues(doc: _Doc, exc: ValidationError) -> list[Issue]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _locate(doc.data, loc)
        typ = err["type"]
        if typ == "extra_forbidden":
            model = _model_at(path[:-1], doc.data)
            fields = list(model.model_fields) if model else []
            out.append(doc.issue(path, f"unknown key '{path[-1]}'", did_you_mean(path[-1], fields), key=True))
        elif typ == "missing":
            missing = loc[-1]
            out.append(doc.issue(path, f"missing required key '{missing}'", f"add '{missing}: ...'", key=bool(path)))
        elif typ == "union_tag_invalid":
            kind = err.get("ctx", {}).get("tag", "?")
            out.append(doc.issue(path + ("kind",), f"unknown node kind '{kind}'", did_you_mean(kind, list(S.NODE_KINDS))))
        elif typ == "union_tag_not_found":
            out.append(doc.issue(path, "a node needs a 'kind'", f"one of: {', '.join(S.NODE_KINDS)}", key=True))
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            out.append(doc.issue(path, f"wrong type or value: {err['msg']} (got {shown})",
                                 "see workflows/README.md or `lladauni schema`"))
    return out


# ----------------------------------------------------------------------------- semantic checks
_PY_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "json": object}


def _check_inputs(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue]) -> None:
    for name, inp in spec.inputs.items():
        if not _NODE_NAME.match(name):
            issues.append(doc.issue(("inputs", name), f"input name '{name}' is not an identifier",
                                    "letters, digits and '_', starting with a letter", key=True))
        if "default" not in inp.model_fields_set:
            continue
        if inp.type == "images" and inp.default == []:
            continue  # optional images: none unless given
        if inp.type in ("image", "images"):
            issues.append(doc.issue(("inputs", name, "default"), f"{inp.type} inputs take no default"
                                    + (" but an empty list" if inp.type == "images" else ""),
                                    "pass the image when running (--set NAME=path.png)", key=True))
            continue
        want = _PY_TYPES[inp.type]
        bad = not isinstance(inp.default, want) or (inp.type in ("integer", "number") and isinstance(inp.default, bool))
        if bad:
            issues.append(doc.issue(("inputs", name, "default"),
                                    f"wrong type: default {inp.default!r} is not of type {inp.type}", f"give a value of type {inp.type} or drop the default"))


def _targets(spec: S.WorkflowSpec) -> dict[str, list[tuple[str, Path_]]]:
    """Successors of each node in the top-level graph (edges and routes), with where each is written."""
    succ: dict[str, list[tuple[str, Path_]]] = {}
    for i, (a, b) in enumerate(spec.edges):
        succ.setdefault(a, []).append((b, ("edges", i, 1)))
    for name, node in spec.nodes.items():
        if isinstance(node, S.RouterNode):
            for j, r in enumerate(node.routes):
                succ.setdefault(name, []).append((r.to, ("nodes", name, "routes", j, "to")))
            succ.setdefault(name, []).append((node.default, ("nodes", name, "default")))
    return succ


def _check_names(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue]) -> None:
    for name in spec.nodes:
        if not _NODE_NAME.match(name) or "__" in name or name in ("START", "END"):
            issues.append(doc.issue(("nodes", name), f"node name '{name}' is not allowed",
                                    "letters, digits and single '_', starting with a letter; not START/END", key=True))


def _loop_owners(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue]) -> dict[str, str]:
    """Body member -> its loop, checking each body entry."""
    names = list(spec.nodes)
    owner: dict[str, str] = {}
    for name, node in spec.nodes.items():
        if not isinstance(node, S.LoopNode):
            continue
        for j, member in enumerate(node.body):
            p = ("nodes", name, "body", j)
            if member not in spec.nodes:
                issues.append(doc.issue(p, f"loop body names unknown node '{member}'", did_you_mean(member, names)))
            elif member == name:
                issues.append(doc.issue(p, f"loop '{name}' cannot contain itself"))
            elif member in owner:
                issues.append(doc.issue(p, f"node '{member}' is already in the body of loop '{owner[member]}'"))
            else:
                owner[member] = name
    return owner


def _check_edge_ends(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue], owner: dict[str, str], i: int) -> None:
    names = list(spec.nodes)
    a, b = spec.edges[i]
    for end, which, allowed, extra in ((a, 0, set(names) | {"START"}, ["START"]), (b, 1, set(names) | {"END"}, ["END"])):
        if end not in allowed:
            if end in ("START", "END"):
                msg = f"{end} cannot be the {'source' if which == 0 else 'target'} of an edge"
                issues.append(doc.issue(("edges", i, which), msg))
            else:
                issues.append(doc.issue(("edges", i, which), f"dangling edge: no node named '{end}'",
                                        did_you_mean(end, names + extra)))
        elif end in owner:
            issues.append(doc.issue(("edges", i, which), f"node '{end}' is in the body of loop '{owner[end]}' and takes no edges",
                                    f"connect the loop '{owner[end]}' instead"))


def _check_edges(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue], owner: dict[str, str]) -> dict[str, int]:
    """Both ends of every edge, one entry, one successor a node; returns each node's edge count."""
    out_count: dict[str, int] = {}
    start_edges = 0
    for i, (a, b) in enumerate(spec.edges):
        _check_edge_ends(spec, doc, issues, owner, i)
        if a == "START":
            start_edges += 1
            if start_edges > 1:
                issues.append(doc.issue(("edges", i), "a second edge from START", "a workflow has one entry; use a router to branch"))
        elif a in spec.nodes:
            if isinstance(spec.nodes[a], S.RouterNode):
                issues.append(doc.issue(("edges", i, 0), f"router '{a}' takes no edges; its routes and default say where it goes"))
                continue
            out_count[a] = out_count.get(a, 0) + 1
            if out_count[a] > 1:
                issues.append(doc.issue(("edges", i), f"node '{a}' already has an outgoing edge",
                                        "each node has one successor; branch with a router node"))
    if start_edges == 0:
        issues.append(doc.issue(("edges",), "no edge from START", "add '- [START, first_node]'", key=True))
    return out_count


def _route_problem(spec: S.WorkflowSpec, owner: dict[str, str], router: str, target: str) -> Optional[tuple[str, str]]:
    """(message, hint) when ``router`` may not route to ``target``. A router outside loop bodies
    routes to nodes outside them (or END); one in the body of loop L routes forward to a later
    member of the same body, or to L itself, which ends the pass (L then checks until and its cap)."""
    names = list(spec.nodes)
    loop = owner.get(router)
    if target not in set(names) | {"END"}:
        return f"route to unknown node '{target}'", did_you_mean(target, names + ["END"])
    if loop is None:
        if target in owner:
            return f"node '{target}' is in the body of loop '{owner[target]}'", f"route to '{owner[target]}'"
        return None
    body = spec.nodes[loop].body  # type: ignore[union-attr]
    later = body[body.index(router) + 1:]
    hint = f"route to a later member of the body ({', '.join(later) or 'none'}) or to '{loop}' to end the pass"
    if target == loop or target in later:
        return None
    if target in body:
        return f"router '{router}' in the body of loop '{loop}' cannot route back to '{target}'", \
            f"a pass runs forward; {hint}"
    return f"router '{router}' is in the body of loop '{loop}' and cannot leave it to '{target}'", hint


def _check_exits(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue], owner: dict[str, str],
                 out_count: dict[str, int]) -> None:
    """Every route goes to a node outside loop bodies (or END); every other node has an edge."""
    for name, node in spec.nodes.items():
        if isinstance(node, S.RouterNode):
            for p, target in [(("nodes", name, "routes", j, "to"), r.to) for j, r in enumerate(node.routes)] + \
                             [(("nodes", name, "default"), node.default)]:
                problem = _route_problem(spec, owner, name, target)
                if problem:
                    issues.append(doc.issue(p, *problem))
        elif name not in owner and out_count.get(name, 0) == 0:
            issues.append(doc.issue(("nodes", name), f"dead end: node '{name}' has no outgoing edge",
                                    f"add '- [{name}, END]' to edges", key=True))


def _check_reachable(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue]) -> None:
    succ = _targets(spec)
    seen, todo = set(), ["START"]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo += [t for t, _ in succ.get(n, [])]
        node = spec.nodes.get(n)
        if isinstance(node, S.LoopNode):
            todo += node.body
    for name in spec.nodes:
        if name not in seen:
            issues.append(doc.issue(("nodes", name), f"unreachable node '{name}': nothing leads to it from START",
                                    "add an edge or route to it, or delete it", key=True))


def _check_cycles(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue]) -> None:
    """The first cycle of edges and routes (outside loop nodes) found from START."""
    succ = _targets(spec)
    color: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> bool:
        color[n] = 1
        stack.append(n)
        for t, where in succ.get(n, []):
            if color.get(t) == 1:
                cyc = stack[stack.index(t):] + [t]
                issues.append(doc.issue(where, f"cycle without a cap: {' -> '.join(cyc)}",
                                        "repeat steps inside a 'loop' node, which requires max_iterations"))
                return True
            if color.get(t, 0) == 0 and dfs(t):
                return True
        stack.pop()
        color[n] = 2
        return False

    dfs("START")


def _check_graph(spec: S.WorkflowSpec, doc: _Doc, issues: list[Issue]) -> None:
    _check_names(spec, doc, issues)
    owner = _loop_owners(spec, doc, issues)
    out_count = _check_edges(spec, doc, issues, owner)
    _check_exits(spec, doc, issues, owner, out_count)
    if issues:
        return  # reachability and cycles need a well-formed graph
    _check_reachable(spec, doc, issues)
    _check_cycles(spec, doc, issues)


def _strings(node: Any, base: Path_) -> list[tuple[Path_, str, bool]]:
    """Every template/expression of a node: (path, text, is_expression)."""
    out: list[tuple[Path_, str, bool]] = []
    for f in S.TEMPLATE_FIELDS:
        v = getattr(node, f, None)
        if isinstance(v, str):
            out.append((base + (f,), v, False))
    for f in S.EXPRESSION_FIELDS:
        v = getattr(node, f, None)
        if isinstance(v, str):
            out.append((base + (f,), v, True))
    for j, v in enumerate(getattr(node, "images", None) or []):
        out.append((base + ("images", j), v, True))
    for j, r in enumerate(getattr(node, "routes", None) or []):
        out.append((base + ("routes", j, "when"), r.when, True))
    for f in ("inputs", "args"):
        vals = getattr(node, f, None)
        if isinstance(vals, dict) and not isinstance(node, S.WorkflowSpec):
            for k, v in vals.items():
                if isinstance(v, str):
                    out.append((base + (f, k), v, not is_template(v)))
    return out


def _with_item(text: str, expr: bool) -> str:
    """A fan-out's template or expression as a template in which ``item`` and ``index`` are defined."""
    body = "{{ " + text + " }}" if expr and not is_template(text) else text
    return "{% for index, item in [] %}" + body + "{% endfor %}"


def _check_templates(wf: Workflow, doc: _Doc, issues: list[Issue]) -> None:
    spec = wf.spec
    fields: dict[str, Optional[list[str]]] = {n: list(S.NODE_OUTPUTS[node.kind]) for n, node in spec.nodes.items()}
    loops = [n for n, node in spec.nodes.items() if isinstance(node, S.LoopNode)]
    items = [x for name, node in spec.nodes.items() for x in _strings(node, ("nodes", name))]
    items += [(("outputs", k), v, not is_template(v)) for k, v in spec.outputs.items() if isinstance(v, str)]
    for path, text, expr in items:
        node = spec.nodes.get(str(path[1])) if path[0] == "nodes" else None
        if getattr(node, "for_each", None) and path[2] in S.ITEM_FIELDS:
            text, expr = _with_item(text, expr), False
        problem = check_template(text, expression=expr, inputs=list(spec.inputs), node_fields=fields, loops=loops,
                                 limits=wf.limits, input_types={k: v.type for k, v in spec.inputs.items()})
        if problem:
            issues.append(doc.issue(path, problem.message, problem.hint, template_line=problem.line))


def _check_calls_and_children(wf: Workflow, doc: _Doc, issues: list[Issue], stack: tuple[Path, ...],
                              memo: dict[Path, Union[Workflow, WorkflowError]]) -> None:
    for name, node in wf.spec.nodes.items():
        if isinstance(node, S.CallNode) and node.function not in wf.functions:
            hint = (did_you_mean(node.function, list(wf.functions)) + "; " if wf.functions else "") + \
                "the host must allow it: lladauni_agent.workflows.register_function(name, fn)"
            issues.append(doc.issue(("nodes", name, "function"), f"unknown function '{node.function}'", hint))
        if not isinstance(node, S.SubworkflowNode):
            continue
        p = ("nodes", name, "workflow")
        target = (wf.base_dir / node.workflow).resolve()
        if not target.is_relative_to(wf.base_dir.resolve()):
            issues.append(doc.issue(p, f"'{node.workflow}' leaves the workflow's directory", "sub-workflows live beside the file that uses them"))
            continue
        if not target.is_file():
            issues.append(doc.issue(p, f"no workflow file '{node.workflow}' in {wf.base_dir}",
                                    did_you_mean(node.workflow, sorted(x.name for x in wf.base_dir.glob("*.yaml")))))
            continue
        if target in stack:
            issues.append(doc.issue(p, f"sub-workflow cycle: {' -> '.join(s.name for s in stack + (target,))}"))
            continue
        try:
            child = _load_path(target, dict(wf.functions), wf.limits, stack, memo)
        except WorkflowError as exc:
            issues.append(doc.issue(p, f"sub-workflow '{node.workflow}' is invalid ({len(exc.issues)} problem(s) below)"))
            issues.extend(exc.issues)
            continue
        wf.children[name] = child
        for k in node.inputs:
            if k not in child.spec.inputs:
                issues.append(doc.issue(("nodes", name, "inputs", k), f"'{node.workflow}' has no input '{k}'",
                                        did_you_mean(k, list(child.spec.inputs)), key=True))
        for k, inp in child.spec.inputs.items():
            if k not in node.inputs and "default" not in inp.model_fields_set:
                issues.append(doc.issue(("nodes", name), f"sub-workflow input '{k}' is required", f"add inputs: {{{k}: ...}}", key=True))


def _validate(text: str, label: str, base_dir: Path, functions: Mapping[str, Callable[..., Any]],
              limits: WorkflowLimits, stack: tuple[Path, ...], memo: dict[Path, Union[Workflow, WorkflowError]]) -> Workflow:
    doc = _Doc(text, label, limits)
    if doc.issues and doc.data is None:
        raise WorkflowError(doc.issues)
    if not isinstance(doc.data, dict):
        raise WorkflowError([doc.issue((), f"a workflow is a mapping of keys, got {type(doc.data).__name__}", "start with 'version: 1'")])
    issues = list(doc.issues)
    try:
        spec = S.WorkflowSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise WorkflowError(issues + _pydantic_issues(doc, exc)) from None
    wf = Workflow(spec, label, base_dir, functions=dict(functions), limits=limits, positions=doc.values, blocks=doc.blocks)
    _check_inputs(spec, doc, issues)
    _check_graph(spec, doc, issues)
    _check_templates(wf, doc, issues)
    _check_calls_and_children(wf, doc, issues, stack, memo)
    if issues:
        raise WorkflowError(issues)
    return wf


def _label(path: Path) -> str:
    return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)


def _read(path: Path, label: str, limits: WorkflowLimits) -> str:
    """The file's text: at most ``max_bytes`` (checked before reading), UTF-8 (else an issue where it breaks)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(limits.max_bytes + 1)
    if max(size, len(data)) > limits.max_bytes:
        exc = limits.exceeded("max_bytes", max(size, len(data)), "bytes in this file")
        raise WorkflowError([Issue(label, 1, 1, "", exc.problem, exc.hint)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8", "replace")
        issue = _text_issue(label, before + "?", len(before),
                            f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded (a binary file, or another encoding?)",
                            "save the workflow as UTF-8 text")
        raise WorkflowError([issue]) from None


def _load_path(path: Path, functions: Mapping[str, Callable[..., Any]], limits: WorkflowLimits,
               stack: tuple[Path, ...] = (), memo: Optional[dict[Path, Union[Workflow, WorkflowError]]] = None) -> Workflow:
    """Load ``path`` (each file once per top-level load: ``memo`` keeps what it gave)."""
    path = path.resolve()
    memo = {} if memo is None else memo
    if path not in memo:
        label = _label(path)
        try:
            memo[path] = _validate(_read(path, label, limits), label, path.parent, functions, limits, stack + (path,), memo)
        except WorkflowError as exc:
            memo[path] = exc
    got = memo[path]
    if isinstance(got, WorkflowError):
        raise WorkflowError(got.issues)
    return got


def load_workflow(source: Union[str, os.PathLike], *, functions: Optional[Mapping[str, Callable[..., Any]]] = None,
                  limits: Optional[WorkflowLimits] = None) -> Workflow:
    """Load and validate a workflow file, or a bundled one by name (``"draw-check-refine"``).

    ``functions`` adds to the registered functions that ``call`` nodes may use; ``limits``
    (default ``WorkflowLimits()``) bounds the file and, when it runs, its templates. Raises
    ``WorkflowError`` listing every problem, ``FileNotFoundError`` when there is no such file.
    """
    p = Path(source)
    if not p.is_file():
        bundled = bundled_workflows()
        if str(source) in bundled:
            p = bundled[str(source)]
        else:
            raise FileNotFoundError(f"no workflow file {str(source)!r} and no bundled workflow of that name "
                                    f"(bundled: {', '.join(bundled) or 'none'})")
    return _load_path(p, registered_functions(functions), limits or WorkflowLimits())


def loads_workflow(text: str, *, label: str = "<string>", base_dir: Union[str, os.PathLike, None] = None,
                   functions: Optional[Mapping[str, Callable[..., Any]]] = None,
                   limits: Optional[WorkflowLimits] = None) -> Workflow:
    """Validate a workflow given as YAML text (sub-workflows resolve against ``base_dir``, default cwd)."""
    limits = limits or WorkflowLimits()
    size = len(text) if len(text) > limits.max_bytes else len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        exc = limits.exceeded("max_bytes", size, "bytes in this text")
        raise WorkflowError([Issue(label, 1, 1, "", exc.problem, exc.hint)])
    return _validate(text, label, Path(base_dir or ".").resolve(), registered_functions(functions), limits, (), {})


# ------------------------------------------------------------------------------- run inputs
TRUE_WORDS = frozenset({"true", "yes", "1", "on"})  # what a boolean input given as text may say
FALSE_WORDS = frozenset({"false", "no", "0", "off"})
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
               "json": "JSON", "image": "an image", "images": "images"}


def _image_problem(v: Any) -> Optional[str]:
    """Why ``v`` is not an image input (a PIL image, a stored image reference, a path to a file)."""
    if hasattr(v, "convert") or (isinstance(v, dict) and "sha256" in v and "png" in v):
        return None
    if isinstance(v, (str, os.PathLike)):
        return None if os.path.isfile(v) else f"no file {os.fspath(v)[:200]!r}"
    return f"got {type(v).__name__} {repr(v)[:80]}"


def _input_problem(t: str, v: Any) -> Optional[str]:
    """Why ``v`` is not a value of the input type ``t`` as a run takes them (text from ``--set``
    is parsed), or None."""
    got = f"got {type(v).__name__} {repr(v)[:80]}"
    if t == "string":
        if not isinstance(v, str):
            return got
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"it holds a lone surrogate at index {exc.start}, which is not valid Unicode text"
        return None
    if t in ("integer", "number"):
        parse, ok = (int, (int,)) if t == "integer" else (float, (int, float))
        if isinstance(v, str):
            try:
                v = parse(v)
            except ValueError:
                return got
        if not isinstance(v, ok) or isinstance(v, bool):
            return got
        if t == "integer" and not -2**63 <= v < 2**63:  # a run's checkpoints store 64-bit integers
            return f"{len(str(abs(v)))} digits is beyond the 64-bit range (-2**63 to 2**63-1)"
        return None
    if t == "boolean":
        return None if isinstance(v, bool) or (isinstance(v, str) and v.lower() in TRUE_WORDS | FALSE_WORDS) else \
            f"{got} (text may say {', '.join(sorted(TRUE_WORDS | FALSE_WORDS))})"
    if t == "json":
        try:
            json.loads(v) if isinstance(v, str) else json.dumps(v)
        except (TypeError, ValueError, RecursionError) as exc:
            return f"{exc} ({got})"
        return None
    items = v.split(",") if t == "images" and isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
    if t == "image" and len(items) != 1:
        return f"one image, {got}"
    for i, x in enumerate(items):
        problem = _image_problem(x)
        if problem:
            return f"item {i}: {problem}" if t == "images" else problem
    return None


def check_inputs(wf: Workflow, inputs: Optional[Mapping[str, Any]]) -> None:
    """Check a run's inputs before anything runs: no unknown input, every required one given,
    each of its declared type (as ``run_workflow`` and ``--set`` accept them). ``ValueError``
    names the input, the type it expects and what was given."""
    given = dict(inputs or {})
    spec = wf.spec
    for k in given:
        if k not in spec.inputs:
            raise ValueError(f"unknown input {k!r} for workflow {spec.name!r}; {did_you_mean(k, list(spec.inputs))}")
    for name, inp in spec.inputs.items():
        if name not in given:
            if "default" not in inp.model_fields_set:
                raise ValueError(f"input {name!r} ({inp.type}) is required: pass --set {name}=... "
                                 f"(or inputs={{{name!r}: ...}}); given: {', '.join(map(repr, given)) or 'no inputs'}")
            continue
        problem = _input_problem(inp.type, given[name])
        if problem:
            sep = ", " if problem.startswith("got ") else ": "
            raise ValueError(f"input {name!r} expects {_TYPE_WORDS[inp.type]}{sep}{problem}")


# ------------------------------------------------------------------------------ model needed
FULL_MODEL_ONLY = (
    "workflow {name!r} needs the full LLaDA2.0-Uni model; a shapes-world model (the embedded default) cannot write free text, "
    "plans or stories, nor combine several reference images (it draws, describes, answers short questions about "
    "and edits one to three coloured shapes). Run it on a full checkpoint: --checkpoint DIR or --server URL "
    "(from Python: LocalBackend(DIR) or HTTPBackend(URL)); the file says so with `requires: full`"
)


def model_problem(wf: Workflow, backend: Any) -> Optional[str]:
    """Why ``wf`` cannot run on ``backend``, or None: a ``requires: full`` workflow on a backend whose
    model declares a closed world (``backend.world``, e.g. the embedded shapes model; loads nothing)."""
    if wf.spec.requires == "full" and isinstance(getattr(backend, "world", None), str):
        return FULL_MODEL_ONLY.format(name=wf.name)
    return None
