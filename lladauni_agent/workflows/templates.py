"""Prompt templates and expressions, rendered in jinja2's immutable sandbox with StrictUndefined.

Two kinds of strings appear in a workflow:

* **templates** (``prompt``, ``question``, ``instruction``, ``system``, and any value holding
  ``{{`` or ``{%``) render to text;
* **expressions** (``image``, ``images``, ``when``, ``until``, ``max_iterations``, ``max_frames``
  and other values) evaluate to a value, e.g. ``nodes.draw.image`` or ``inputs.rounds > 1``.

Both see three names: ``inputs`` (the run's inputs), ``nodes`` (each finished node's output) and
``loops`` (each running loop's counters). ``check`` does the static part of validation: syntax,
no ``import``/``include``/``extends``, no attribute starting with ``_``, and every name rooted in
those three exists.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes as jnodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ENV", "ROOTS", "is_template", "render", "evaluate", "check", "TemplateIssue"]

ROOTS = ("inputs", "nodes", "loops")

# No loader: {% import %} / {% include %} / {% extends %} can never read a file.
ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _strip_braces(expr: str) -> str:
    """``"{{ x }}"`` is accepted where an expression is expected and means ``x``."""
    s = expr.strip()
    if s.startswith("{{") and s.endswith("}}") and s.count("{{") == 1:
        return s[2:-2].strip()
    return s


def render(template: str, scope: Mapping[str, Any]) -> str:
    """Render a template (``jinja2.exceptions.SecurityError`` / ``UndefinedError`` on misuse)."""
    return ENV.from_string(template).render(**scope)


def evaluate(expr: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate an expression; a template string renders to text instead."""
    if is_template(expr) and _strip_braces(expr) == expr.strip():
        return render(expr, scope)
    return ENV.compile_expression(_strip_braces(expr), undefined_to_none=False)(**scope)


@dataclass
class TemplateIssue:
    message: str
    hint: str = ""


def _hint(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"known: {', '.join(sorted(choices)) or '(none)'}"


def check(
    text: str,
    *,
    expression: bool,
    inputs: list[str],
    node_fields: Mapping[str, Optional[list[str]]],
    loops: list[str],
) -> Optional[TemplateIssue]:
    """Static check of one template/expression; ``node_fields`` maps each node name to the output
    fields it has (``None``: any field, e.g. a call node's value)."""
    source = "{{ " + _strip_braces(text) + " }}" if expression and not is_template(text) else text
    try:
        ast = ENV.parse(source)
    except TemplateSyntaxError as exc:
        return TemplateIssue(f"template syntax error: {exc.message}", "see https://jinja.palletsprojects.com/templates/")
    for bad in (jnodes.Import, jnodes.FromImport, jnodes.Include, jnodes.Extends):
        for _ in ast.find_all(bad):
            return TemplateIssue(f"'{bad.__name__.lower()}' is not allowed in workflow templates",
                                 "templates cannot read other files; put the text in the workflow")
    for g in ast.find_all(jnodes.Getattr):
        if g.attr.startswith("_"):
            return TemplateIssue(f"attribute '{g.attr}' is not allowed (names starting with '_' are internals)",
                                 "templates only read workflow data: inputs, nodes, loops")
    for g in ast.find_all(jnodes.Getitem):
        if isinstance(g.arg, jnodes.Const) and isinstance(g.arg.value, str) and g.arg.value.startswith("_"):
            return TemplateIssue(f"key '{g.arg.value}' is not allowed (names starting with '_' are internals)")
    local = {n.name for n in ast.find_all(jnodes.Name) if n.ctx in ("store", "param")}
    for n in ast.find_all(jnodes.Name):
        if n.ctx == "load" and n.name not in ROOTS and n.name not in local and n.name not in ENV.globals:
            return TemplateIssue(f"undefined template variable '{n.name}'",
                                 f"templates see {', '.join(ROOTS)}; {_hint(n.name, list(ROOTS))}")

    def attr_of(node: Any) -> Optional[str]:
        if isinstance(node, jnodes.Getattr):
            return node.attr
        if isinstance(node, jnodes.Getitem) and isinstance(node.arg, jnodes.Const) and isinstance(node.arg.value, str):
            return node.arg.value
        return None

    for g in list(ast.find_all(jnodes.Getattr)) + list(ast.find_all(jnodes.Getitem)):
        name = attr_of(g)
        if name is None or not isinstance(g.node, jnodes.Name) or g.node.name in local:
            continue
        root = g.node.name
        if root == "inputs" and name not in inputs:
            return TemplateIssue(f"undefined template variable 'inputs.{name}'", _hint(name, inputs))
        if root == "loops" and name not in loops:
            return TemplateIssue(f"undefined template variable 'loops.{name}' (not a loop node)", _hint(name, loops))
        if root == "nodes":
            if name not in node_fields:
                return TemplateIssue(f"undefined template variable 'nodes.{name}'", _hint(name, list(node_fields)))
    for g in list(ast.find_all(jnodes.Getattr)) + list(ast.find_all(jnodes.Getitem)):
        field = attr_of(g)
        inner = g.node
        if field is None or not (isinstance(inner, (jnodes.Getattr, jnodes.Getitem)) and isinstance(inner.node, jnodes.Name)):
            continue
        if inner.node.name != "nodes" or inner.node.name in local:
            continue
        node = attr_of(inner)
        fields = node_fields.get(node or "")
        if fields is not None and field not in fields:
            return TemplateIssue(f"node '{node}' has no output '{field}'", f"its outputs: {', '.join(fields)}; {_hint(field, fields)}")
    return None
