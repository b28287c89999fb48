"""Prompt templates and expressions, rendered in jinja2's immutable sandbox with StrictUndefined.

Two kinds of strings appear in a workflow:

* **templates** (``prompt``, ``question``, ``instruction``, ``system``, and any value holding
  ``{{`` or ``{%``) render to text;
* **expressions** (``image``, ``images``, ``when``, ``until``, ``max_iterations``, ``max_frames``
  and other values) evaluate to a value, e.g. ``nodes.draw.image`` or ``inputs.rounds > 1``.

Both see three names: ``inputs`` (the run's inputs), ``nodes`` (each finished node's output) and
``loops`` (each running loop's counters). ``check`` does the static part of validation: syntax,
no ``import``/``include``/``extends``, no attribute starting with ``_``, every name rooted in
those three exists, and no limit of ``WorkflowLimits`` that the template itself spells out is
passed (a literal ``range(10**7)``, nested loops whose passes multiply past the cap, a string
repeated a literal 200,000,000 times).

The sandbox enforces the rest while it renders (``LimitedSandbox``): the text a render writes
(counted as it is written, so it stops as soon as the cap is passed), ``range`` sizes, the passes
of all loops, calls, the size of every string and list that ``*``, ``+``, ``~``, ``%``, a filter
or a method builds (checked before it is built), integer sizes, and a wall-clock backstop. A limit
that is passed raises ``WorkflowLimitError`` naming it.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import itertools
import math
import re
import time
from collections.abc import ItemsView, KeysView, ValuesView
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes as jnodes, pass_context
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from .schema import WorkflowLimitError, WorkflowLimits

__all__ = ["ENV", "ROOTS", "LimitedSandbox", "is_template", "render", "evaluate", "check", "TemplateIssue",
           "TemplateRunError", "template_line", "text_size"]

ROOTS = ("inputs", "nodes", "loops")


class TemplateRunError(ValueError):
    """A template or expression failed while a workflow ran; the message starts with
    ``file:line:col: key:`` (where it is written in the workflow file)."""


# ------------------------------------------------------------------------------- the budget
class Budget:
    """What one render has used of its ``WorkflowLimits``."""

    def __init__(self, limits: WorkflowLimits) -> None:
        self.limits = limits
        self.written = self.iterations = self.calls = self.built = 0
        self.started = time.monotonic()

    def tick(self) -> None:
        spent = time.monotonic() - self.started
        if spent > self.limits.max_seconds:
            raise self.limits.exceeded("max_seconds", f"{spent:.1f} s", "the time this template ran")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_loop_iterations:
            raise self.limits.exceeded("max_loop_iterations", self.iterations, "passes of this template's loops")
        self.tick()

    def call(self) -> None:
        self.calls += 1
        if self.calls > self.limits.max_calls:
            raise self.limits.exceeded("max_calls", self.calls, "calls (functions, methods, macros) of this template")
        self.tick()

    def write(self, n: int) -> None:
        self.written += n
        if self.written > self.limits.max_output_chars:
            raise self.limits.exceeded("max_output_chars", self.written, "characters this template writes")

    def size(self, n: int, what: str, *, items: bool = False) -> None:
        """A string of ``n`` characters (a list of ``n`` items) is about to be built: check and count it."""
        limit = "max_range" if items else "max_output_chars"
        if n > getattr(self.limits, limit):
            raise self.limits.exceeded(limit, n, what)
        self.built += n
        if self.built > self.limits.max_built:
            raise self.limits.exceeded("max_built", self.built, "characters and items this template builds or reads")
        self.tick()

    def read(self, value: Any, what: str) -> None:
        """A filter or method is about to read ``value``: count it as work, its characters, or
        its items (read one at a time in Python, ten times the cost of a character each)."""
        self.built += len(value) * (1 if isinstance(value, str) else 10)
        if self.built > self.limits.max_built:
            raise self.limits.exceeded("max_built", self.built, f"characters and items this template builds or reads ({what})")
        self.tick()

    def digits(self, n: int, what: str) -> None:
        if n > self.limits.max_int_digits:
            raise self.limits.exceeded("max_int_digits", n, what)

    def argument(self, v: Any, what: str) -> None:
        """A width, count or length argument builds that much text at most: at most the output cap."""
        if isinstance(v, int) and not isinstance(v, bool) and v > self.limits.max_output_chars:
            raise self.limits.exceeded("max_output_chars", v, what)


_ACTIVE: contextvars.ContextVar[Optional[Budget]] = contextvars.ContextVar("lladauni_template_budget", default=None)


def budget_of(context: Any) -> Budget:
    """The budget of the render in progress; a template rendered outside ``render``/``evaluate``
    gets one of its own, with the default limits, kept on its context."""
    b = _ACTIVE.get()
    if b is None:
        b = getattr(context, "lladauni_budget", None)
        if b is None:
            b = Budget(WorkflowLimits())
            context.lladauni_budget = b
    return b


@contextlib.contextmanager
def _budget(limits: Optional[WorkflowLimits]) -> Iterator[Budget]:
    b = Budget(limits or WorkflowLimits())
    token = _ACTIVE.set(b)
    try:
        yield b
    finally:
        _ACTIVE.reset(token)


# ------------------------------------------------------------------------- sizes, estimated
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_digits(v: int) -> int:
    return int(abs(v).bit_length() * 0.30103) + 1


_COLLECTIONS = (dict, list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _scalar_size(x: Any) -> int:
    t = type(x)
    if t is str:
        return len(x) + 2
    if t in (int, float, bool) or x is None:
        return len(repr(x)) if t is not int or -10 ** 18 < x < 10 ** 18 else _int_digits(x)
    return 30  # a small object


def _items_size(items: list, depth: int, stack: list) -> int:
    """The text of scalar ``items`` (1024 at a time, by ``repr``: exact); collections among
    them go on ``stack`` to be counted in turn."""
    total = 0
    for i in range(0, len(items), 1024):
        chunk = items[i:i + 1024]
        if set(map(type, chunk)) <= _SCALARS:
            try:
                total += len(repr(chunk))
                continue
            except ValueError:  # an int too long for repr
                pass
        for x in chunk:
            if isinstance(x, _COLLECTIONS):
                stack.append((x, depth + 1))
                total += 2
            else:
                total += 2 + _scalar_size(x)
    return total


def text_size(value: Any, cap: int, indent: int = 0) -> int:
    """About ``len(str(value))`` (exact for a string; for lists and dicts an upper estimate), without
    building the text, counting no further than just past ``cap``; with ``indent``, the size of
    the JSON ``tojson(indent=indent)`` writes, each item on a line of its own."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, _COLLECTIONS):
        return _scalar_size(value)
    total, stack = 0, [(value, 0)]
    while stack and total <= cap:
        v, depth = stack.pop()
        items = list(itertools.chain.from_iterable(v.items())) if isinstance(v, dict) else \
            v if isinstance(v, list) else list(v)
        total += 2 + depth * indent + len(items) * (depth + 1) * indent  # brackets; with indent, each item's line
        for i in range(0, len(items), 65536):
            total += _items_size(items[i:i + 65536], depth, stack)
            if total > cap:
                break
    return total


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")


def _number(text: Optional[str], cap: int) -> int:
    return 0 if not text or text == "*" else (int(text) if len(text) < 10 else cap + 1)


def format_size(fmt: str, args: Any, cap: int, *, braces: bool) -> int:
    """About the length of ``fmt % args`` (``braces``: ``fmt.format(*args)``): the format, the
    widths and precisions it asks for, the text of the arguments (and those used as widths)."""
    size = len(fmt)
    if braces:
        specs = [m.group(1) for m in _BRACE_SPEC.finditer(fmt)]
        size += sum(_number(n, cap) for s in specs for n in re.findall(r"\d+", s))
        star = re.search(r"\{[^{}]*:[^{}]*\{", fmt) is not None  # a width given by another field
    else:
        specs = _PERCENT_SPEC.findall(fmt)
        size += sum(_number(w, cap) + _number(p, cap) for w, p in specs)
        star = any("*" in (w, p) for w, p in specs)
    items = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, (list, tuple)) else [args]
    size += sum(text_size(x, cap) for x in items)
    if star:  # widths given as arguments
        size += sum(x for x in items if _is_int(x) and x > 0)
    return size


# ---------------------------------------------------------------- filters and methods, bounded
def _as_list(value: Any, b: Budget, what: str) -> list:
    """An iterable as a list, counting its items (so a generator is read once, and at most the cap)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    out = []
    for x in value:
        out.append(x)
        if len(out) > b.limits.max_range:
            b.size(len(out), what, items=True)
    return out


def _join_size(b: Budget, items: list, sep: str) -> int:
    cap = b.limits.max_output_chars
    size = len(sep) * max(len(items) - 1, 0)
    for x in items:
        size += text_size(x, cap)
        if size > cap:
            break
    return size


def _replace_size(s: str, old: str, new: str, count: Any = None) -> int:
    n = s.count(old)
    if _is_int(count) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(len(new) - len(old), 0)


def _indent_size(s: str, width: Any = 4, first: bool = False, blank: bool = False) -> int:
    w = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    return len(s) + (s.count("\n") + 1) * w


def _wordwrap_size(s: str, width: Any = 79, break_long_words: bool = True, wrapstring: Optional[str] = None,
                   break_on_hyphens: bool = True) -> int:
    lines = len(s) // max(width if _is_int(width) else 1, 1) + s.count("\n") + 1
    return len(s) + lines * len(str(wrapstring) if wrapstring is not None else "\n")


def _sum_work(items: list, start: Any, cap: int) -> int:
    """Summing lists (or tuples) copies the total so far at every step: the items that copies."""
    if not isinstance(start, (list, tuple)) and not any(isinstance(x, (list, tuple)) for x in items[:1]):
        return 0
    so_far = work = len(start) if isinstance(start, (list, tuple)) else 0
    for x in items:
        so_far += len(x) if isinstance(x, (list, tuple, str)) else 1
        work += so_far
        if work > cap:
            break
    return work


def _filter_precheck(b: Budget, name: str, value: Any, args: tuple, kwargs: dict) -> Any:
    """Check what the filter ``name`` would build before it runs; returns the value (a generator
    read into a list where the check has to read it)."""
    cap = b.limits.max_output_chars
    what = f"the text that |{name} builds"
    if name in ("join", "sum"):
        value = _as_list(value, b, f"the items given to |{name}")
    text = value if isinstance(value, str) else None
    if name == "join":
        sep = args[0] if args else kwargs.get("d", "")
        b.size(_join_size(b, value, str(sep)), what)
    elif name == "sum":
        b.size(_sum_work(value, kwargs.get("start", args[1] if len(args) > 1 else 0), b.limits.max_built),
               "items copied while |sum adds lists", items=True)
    elif name == "format":
        b.size(format_size(str(value), args or kwargs, cap, braces=False), what)
    elif name == "tojson":
        indent = args[0] if args else kwargs.get("indent")
        b.size(text_size(value, cap, indent if _is_int(indent) and indent > 0 else 0), what)
    elif text is not None and name in ("replace", "indent", "wordwrap"):
        size = {"replace": _replace_size, "indent": _indent_size, "wordwrap": _wordwrap_size}[name]
        b.size(size(text, *[str(a) if name == "replace" and i < 2 else a for i, a in enumerate(args)], **kwargs), what)
    return value


# filters that do not turn their value into text (the others are checked for the size of that text)
_NO_TEXT = {"abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "groupby", "items", "last", "length",
            "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "round", "select", "selectattr",
            "slice", "sort", "sum", "unique", "int", "float", "join"}


# filters that do not read their whole value (the others count its length as work)
_CONSTANT_TIME = {"length", "count", "first", "last", "random", "d", "default", "attr", "abs", "round", "int", "float"}


def bounded_filter(name: str, fn: Callable) -> Callable:
    """``fn`` (a jinja filter) checked against the render's limits before and after it runs."""
    passes = getattr(getattr(fn, "jinja_pass_arg", None), "name", None)

    @pass_context
    def run(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        b = budget_of(context)
        b.tick()
        for a in (*args, *kwargs.values()):
            b.argument(a, f"an argument of |{name}")
        if name not in _NO_TEXT and not isinstance(value, str) and isinstance(value, (list, tuple, dict, set)):
            b.size(text_size(value, b.limits.max_output_chars), f"the text of the value given to |{name}")
        value = _filter_precheck(b, name, value, args, kwargs)
        if name not in _CONSTANT_TIME and hasattr(value, "__len__"):
            b.read(value, f"|{name}")
        first = {"context": (context,), "eval_context": (context.eval_ctx,), "environment": (context.environment,)}
        out = fn(*first.get(passes, ()), value, *args, **kwargs)
        if isinstance(out, (str, list, tuple, dict)):
            b.size(len(out), f"what |{name} built", items=not isinstance(out, str))
        return out

    run.__name__ = f"bounded_{name}"
    return run


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs", "to_bytes"}


def _method_precheck(b: Budget, fn: Any, args: tuple, kwargs: dict) -> tuple:
    """Check what a method of a str (or int) would build before it runs; returns the arguments
    (an iterable given to ``join`` read into a list)."""
    owner, name = getattr(fn, "__self__", None), getattr(fn, "__name__", "")
    if not isinstance(owner, (str, int)):
        return args
    what = f"the text that {type(owner).__name__}.{name}() builds"
    cap = b.limits.max_output_chars
    if name in _WIDTH_METHODS:
        for a in (*args, *kwargs.values()):
            b.argument(a, f"an argument of {type(owner).__name__}.{name}()")
    if not isinstance(owner, str):
        return args
    if name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        b.size(len(owner) + owner.count("\t") * (tab if _is_int(tab) else 8), what)
    elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        b.size(_replace_size(owner, *args), what)
    elif name == "join" and args:
        items = _as_list(args[0], b, "the items given to str.join()")
        b.size(_join_size(b, items, owner), what)
        args = (items, *args[1:])
    elif name in ("format", "format_map"):
        b.size(format_size(owner, (args[0] if args else {}) if name == "format_map" else (kwargs or args), cap,
                           braces=True), what)
    return args


class _BoundedNamespace(Namespace):
    """``namespace()`` whose text form does not spell out its contents (which may be large)."""

    def __repr__(self) -> str:
        return "<namespace>"


# ------------------------------------------------------------------------------ the sandbox
class _LimitedCodeGenerator(CodeGenerator):
    """jinja's code generator with three changes: every ``{% for %}`` iterates through
    ``environment.guard_iter`` (counting passes), every ``~`` goes through
    ``environment.guard_concat`` (checking the size first), and no output is folded into a
    constant at compile time, so all of it, literal text too, passes ``finalize`` (counting it)."""

    def visit_For(self, node: jnodes.For, frame: Any) -> None:
        guard = jnodes.EnvironmentAttribute("guard_iter", lineno=node.lineno)
        node.iter = jnodes.Call(guard, [jnodes.ContextReference(lineno=node.lineno), node.iter], [], None, None,
                                lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: jnodes.Concat, frame: Any) -> None:
        self.write("environment.guard_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _output_child_to_const(self, node: jnodes.Expr, frame: Any, finalize: Any) -> str:
        raise jnodes.Impossible()


@pass_context
def _finalize(context: Any, value: Any) -> Any:
    """Every piece of output, as it is written: count it against ``max_output_chars``."""
    b = budget_of(context)
    if not isinstance(value, Undefined):
        b.write(text_size(value, b.limits.max_output_chars - b.written))
    b.tick()
    return value


@pass_context
def bounded_range(context: Any, *args: Any) -> range:
    """``range`` with at most ``max_range`` items."""
    b = budget_of(context)
    rng = range(*args)
    try:
        n = len(rng)
    except OverflowError:
        n = abs(rng.stop - rng.start) // abs(rng.step)
    if n > b.limits.max_range:
        raise b.limits.exceeded("max_range", n, "items of range()")
    return rng


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, bounded: see the module's docstring."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _LimitedCodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(finalize=_finalize, **kwargs)
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs
        self.globals.update(range=bounded_range, namespace=_BoundedNamespace)
        self.filters = {name: bounded_filter(name, fn) for name, fn in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = budget_of(context)
        if operator == "*":
            seq, n = (left, right) if _is_int(right) else (right, left)
            if _is_int(n) and isinstance(seq, (str, list, tuple)):
                what = "characters of a string" if isinstance(seq, str) else f"items of a {type(seq).__name__}"
                b.size(len(seq) * max(n, 0), f"{what} repeated {n} times", items=not isinstance(seq, str))
            elif _is_int(left) and _is_int(right):
                b.digits(_int_digits(left) + _int_digits(right), "digits of a product")
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            b.digits(int(right * math.log10(abs(left))) + 1, "digits of a power")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and type(left) is type(right):
            b.size(len(left) + len(right), "characters of two strings added" if isinstance(left, str) else
                   f"items of two {type(left).__name__}s added", items=not isinstance(left, str))
        elif operator == "%" and isinstance(left, str):
            b.size(format_size(left, right, b.limits.max_output_chars, braces=False), "the text that % formats")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(obj, "__func__", None) is LimitedSandbox.guard_iter:
            return context.call(obj, *args, **kwargs)
        b = budget_of(context)
        b.call()
        own = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}  # jinja's, not the call's
        fn = getattr(obj, "__wrapped__", obj)
        args = _method_precheck(b, fn, args, own)
        owner, name = getattr(fn, "__self__", None), getattr(fn, "__name__", "?")
        if isinstance(owner, str) or (isinstance(owner, (list, tuple)) and name in ("index", "count", "copy")):
            b.read(owner, f"{type(owner).__name__}.{name}()")  # these read all of it
        out = super().call(context, obj, *args, **kwargs)
        if isinstance(out, (str, list, tuple, dict)):
            b.size(len(out), "what a call returned", items=not isinstance(out, str))
        return out

    def guard_iter(self, context: Any, iterable: Any) -> Iterator[Any]:
        """What a ``{% for %}`` iterates: ``iterable``, each pass counted."""
        b = budget_of(context)
        for x in iterable:
            b.iterate()
            yield x

    def guard_concat(self, context: Any, parts: tuple) -> str:
        """``a ~ b ~ ...``: the size checked before the text is built."""
        b = budget_of(context)
        cap = b.limits.max_output_chars
        b.size(sum(text_size(p, cap) for p in parts), "the text that ~ joins")
        return "".join(str(p) for p in parts)


# No loader: {% import %} / {% include %} / {% extends %} can never read a file.
ENV = LimitedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _strip_braces(expr: str) -> str:
    """``"{{ x }}"`` is accepted where an expression is expected and means ``x``."""
    s = expr.strip()
    if s.startswith("{{") and s.endswith("}}") and s.count("{{") == 1:
        return s[2:-2].strip()
    return s


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> Any:
    return ENV.from_string(source)


@functools.lru_cache(maxsize=512)
def _compiled_expression(source: str) -> Any:
    return ENV.compile_expression(source, undefined_to_none=False)


def render(template: str, scope: Mapping[str, Any], *, limits: Optional[WorkflowLimits] = None) -> str:
    """Render a template (``jinja2.exceptions.SecurityError`` / ``UndefinedError`` on misuse,
    ``WorkflowLimitError`` past a limit), incrementally: it stops as soon as the output passes
    ``max_output_chars``."""
    with _budget(limits) as b:
        out: list[str] = []
        size = 0
        try:
            for chunk in _compiled(template).generate(**scope):
                size += len(chunk)
                if size > b.limits.max_output_chars:
                    raise b.limits.exceeded("max_output_chars", size, "characters this template writes")
                out.append(chunk)
        except RecursionError:
            raise ValueError("the template nests or recurses too deeply") from None
        return "".join(out)


def evaluate(expr: str, scope: Mapping[str, Any], *, limits: Optional[WorkflowLimits] = None) -> Any:
    """Evaluate an expression; a template string renders to text instead. An undefined result
    raises ``UndefinedError`` naming what is missing."""
    if is_template(expr) and _strip_braces(expr) == expr.strip():
        return render(expr, scope, limits=limits)
    with _budget(limits):
        try:
            value = _compiled_expression(_strip_braces(expr))(**scope)
        except RecursionError:
            raise ValueError("the expression nests or recurses too deeply") from None
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined: raises UndefinedError
    return value


_TEMPLATE_FRAMES = ("template", "top-level template code")


def template_line(exc: BaseException) -> Optional[int]:
    """The line of the template (1-based) where ``exc`` was raised, when jinja tells it (its
    syntax errors, and errors of rendering, whose traceback it rewrites to template lines)."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line, tb = None, exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_name
        if tb.tb_frame.f_code.co_filename == "<template>" and (name in _TEMPLATE_FRAMES or name.startswith("block ")):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# -------------------------------------------------------------------------- static checks
@dataclass
class TemplateIssue:
    message: str
    hint: str = ""
    line: Optional[int] = None  # the template's line, when known


def _hint(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known: {', '.join(sorted(choices)) or '(none)'}"


def _limit_issue(exc: WorkflowLimitError, node: Any) -> TemplateIssue:
    return TemplateIssue(exc.problem, exc.hint, getattr(node, "lineno", None))


def _literal_int(node: Any) -> Optional[int]:
    if isinstance(node, jnodes.Const) and _is_int(node.value):
        return node.value
    if isinstance(node, jnodes.Neg) and _literal_int(node.node) is not None:
        return -_literal_int(node.node)  # type: ignore[operator]
    return None


def _static_len(node: Any) -> Optional[int]:
    """The length of a sequence written out in the template (a string, list, range or repetition of them)."""
    if isinstance(node, jnodes.Const) and isinstance(node.value, str):
        return len(node.value)
    if isinstance(node, (jnodes.List, jnodes.Tuple)):
        return len(node.items)
    if isinstance(node, jnodes.Call) and isinstance(node.node, jnodes.Name) and node.node.name == "range" \
            and not node.kwargs and 1 <= len(node.args) <= 3:
        ints = [_literal_int(a) for a in node.args]
        if None not in ints and (len(ints) < 3 or ints[2] != 0):
            rng = range(*ints)  # type: ignore[arg-type]
            return max(0, (rng.stop - rng.start + rng.step - (1 if rng.step > 0 else -1)) // rng.step)
    if isinstance(node, jnodes.Mul):
        for seq, n in ((node.left, node.right), (node.right, node.left)):
            length, times = _static_len(seq), _literal_int(n)
            if length is not None and times is not None:
                return length * max(times, 0)
    if isinstance(node, jnodes.Filter) and node.name == "list" and node.node is not None:
        return _static_len(node.node)
    return None


def _is_text(node: Any, input_types: Mapping[str, str]) -> bool:
    """Whether the expression surely gives a string (or a list) when it runs."""
    if isinstance(node, (jnodes.Const, jnodes.List, jnodes.Tuple)):
        return isinstance(node.value, str) if isinstance(node, jnodes.Const) else True
    if isinstance(node, jnodes.Concat):
        return True
    if isinstance(node, jnodes.Getattr) and isinstance(node.node, jnodes.Name) and node.node.name == "inputs":
        return input_types.get(node.attr) in ("string", "images")
    if isinstance(node, jnodes.Getattr) and node.attr == "text" and isinstance(node.node, jnodes.Getattr) \
            and isinstance(node.node.node, jnodes.Name) and node.node.node.name == "nodes":
        return True
    return isinstance(node, jnodes.Filter) and node.name in ("string", "join", "upper", "lower", "trim", "list")


def _check_sizes(ast: Any, limits: WorkflowLimits, input_types: Mapping[str, str]) -> None:
    """Ranges, repetitions and powers written out in the template, against the limits."""
    for call in ast.find_all(jnodes.Call):
        if isinstance(call.node, jnodes.Name) and call.node.name == "range":
            n = _static_len(call)
            if n is not None and n > limits.max_range:
                raise _Static(limits.exceeded("max_range", n, "items of this range()"), call)
    for op in ast.find_all((jnodes.Mul, jnodes.Pow)):
        left, right = _literal_int(op.left), _literal_int(op.right)
        if isinstance(op, jnodes.Pow):
            if left is not None and right is not None and right > 0 and abs(left) > 1:
                n = int(right * math.log10(abs(left))) + 1
                if n > limits.max_int_digits:
                    raise _Static(limits.exceeded("max_int_digits", n, "digits of this power"), op)
            continue
        for seq, times in ((op.left, right), (op.right, left)):
            if times is None or not _is_text(seq, input_types):
                continue
            items = isinstance(seq, (jnodes.List, jnodes.Tuple)) or (isinstance(seq, jnodes.Filter) and seq.name == "list")
            length = _static_len(seq)
            n = (1 if length is None else length) * times
            limit = "max_range" if items else "max_output_chars"
            if n > getattr(limits, limit):
                what = "items of this list repetition" if items else "characters of this string repetition"
                raise _Static(limits.exceeded(limit, n, what), op)


def _loop_passes(nodes: Any) -> int:
    """Passes the loops among ``nodes`` (and inside them) make when they run (a loop over
    something not written out in the template counts as one pass; its ``else`` as one more)."""
    total = 0
    for child in nodes:
        if isinstance(child, jnodes.For):
            passes = _static_len(child.iter)
            total += (1 if passes is None else passes) * (1 + _loop_passes(child.body)) + _loop_passes(child.else_)
        else:
            total += _loop_passes(child.iter_child_nodes())
    return total


class _Static(Exception):
    def __init__(self, exc: WorkflowLimitError, node: Any) -> None:
        self.exc, self.node = exc, node


def _check_limits(ast: Any, limits: WorkflowLimits, input_types: Mapping[str, str]) -> Optional[TemplateIssue]:
    try:
        _check_sizes(ast, limits, input_types)
        for loop in ast.find_all(jnodes.For):
            passes = _static_len(loop.iter) or 0
            total = passes * (1 + _loop_passes(loop.body))
            if total > limits.max_loop_iterations:
                raise _Static(limits.exceeded("max_loop_iterations", total, "passes of these nested loops"), loop)
    except _Static as s:
        return _limit_issue(s.exc, s.node)
    return None


def _check_names(ast: Any, inputs: list[str], node_fields: Mapping[str, Optional[list[str]]],
                 loops: list[str]) -> Optional[TemplateIssue]:
    local = {n.name for n in ast.find_all(jnodes.Name) if n.ctx in ("store", "param")}
    for n in ast.find_all(jnodes.Name):
        if n.ctx == "load" and n.name not in ROOTS and n.name not in local and n.name not in ENV.globals:
            return TemplateIssue(f"undefined template variable '{n.name}'",
                                 f"templates see {', '.join(ROOTS)}; {_hint(n.name, list(ROOTS))}", n.lineno)

    def attr_of(node: Any) -> Optional[str]:
        if isinstance(node, jnodes.Getattr):
            return node.attr
        if isinstance(node, jnodes.Getitem) and isinstance(node.arg, jnodes.Const) and isinstance(node.arg.value, str):
            return node.arg.value
        return None

    lookups = list(ast.find_all(jnodes.Getattr)) + list(ast.find_all(jnodes.Getitem))
    for g in lookups:
        name = attr_of(g)
        if name is None or not isinstance(g.node, jnodes.Name) or g.node.name in local:
            continue
        root = g.node.name
        if root == "inputs" and name not in inputs:
            return TemplateIssue(f"undefined template variable 'inputs.{name}'", _hint(name, inputs), g.lineno)
        if root == "loops" and name not in loops:
            return TemplateIssue(f"undefined template variable 'loops.{name}' (not a loop node)", _hint(name, loops), g.lineno)
        if root == "nodes" and name not in node_fields:
            return TemplateIssue(f"undefined template variable 'nodes.{name}'", _hint(name, list(node_fields)), g.lineno)
    for g in lookups:
        field = attr_of(g)
        inner = g.node
        if field is None or not (isinstance(inner, (jnodes.Getattr, jnodes.Getitem)) and isinstance(inner.node, jnodes.Name)):
            continue
        if inner.node.name != "nodes" or inner.node.name in local:
            continue
        node = attr_of(inner)
        fields = node_fields.get(node or "")
        if fields is not None and field not in fields:
            return TemplateIssue(f"node '{node}' has no output '{field}'", f"its outputs: {', '.join(fields)}; {_hint(field, fields)}",
                                 g.lineno)
    return None


def _check_safety(ast: Any) -> Optional[TemplateIssue]:
    for bad in (jnodes.Import, jnodes.FromImport, jnodes.Include, jnodes.Extends):
        for node in ast.find_all(bad):
            return TemplateIssue(f"'{bad.__name__.lower()}' is not allowed in workflow templates",
                                 "templates cannot read other files; put the text in the workflow", node.lineno)
    for g in ast.find_all(jnodes.Getattr):
        if g.attr.startswith("_"):
            return TemplateIssue(f"attribute '{g.attr}' is not allowed (names starting with '_' are internals)",
                                 "templates only read workflow data: inputs, nodes, loops", g.lineno)
    for g in ast.find_all(jnodes.Getitem):
        if isinstance(g.arg, jnodes.Const) and isinstance(g.arg.value, str) and g.arg.value.startswith("_"):
            return TemplateIssue(f"key '{g.arg.value}' is not allowed (names starting with '_' are internals)", "", g.lineno)
    return None


def check(
    text: str,
    *,
    expression: bool,
    inputs: list[str],
    node_fields: Mapping[str, Optional[list[str]]],
    loops: list[str],
    limits: Optional[WorkflowLimits] = None,
    input_types: Optional[Mapping[str, str]] = None,
) -> Optional[TemplateIssue]:
    """Static check of one template/expression; ``node_fields`` maps each node name to the output
    fields it has (``None``: any field, e.g. a call node's value); ``input_types`` the declared
    type of each input (to tell a repeated string from a product of numbers)."""
    source = "{{ " + _strip_braces(text) + " }}" if expression and not is_template(text) else text
    try:
        ast = ENV.parse(source)
        return (_check_safety(ast) or _check_limits(ast, limits or WorkflowLimits(), input_types or {})
                or _check_names(ast, inputs, node_fields, loops))
    except TemplateSyntaxError as exc:
        return TemplateIssue(f"template syntax error: {exc.message}", "see https://jinja.palletsprojects.com/templates/",
                             exc.lineno)
    except RecursionError:
        return TemplateIssue("the template nests too deeply for the parser", "split it into simpler expressions")
