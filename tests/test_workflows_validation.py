"""YAML workflow validation: one broken workflow per error kind, each with its message and
line:column; the template sandbox; the JSON Schema export; the CLI's validate/schema."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError

from lladauni.agent.workflows import (WorkflowError, bundled_workflows, load_workflow, loads_workflow, register_function,
                                      unregister_function, workflow_json_schema)
from lladauni.agent.workflows.cli import add_workflow_commands
from lladauni.agent.workflows.templates import render

GOOD = """\
version: 1
name: t
inputs:
  prompt: {type: string}
nodes:
  draw:
    kind: draw
    prompt: "{{ inputs.prompt }}"
edges:
  - [START, draw]
  - [draw, END]
"""

# name -> (yaml, expected substring, line, column)
BROKEN = {
    "unknown_key": (GOOD.replace("    prompt: \"{{", "    promt: \"{{"), "unknown key 'promt' (hint: did you mean 'prompt'?)", 8, 5),
    "unknown_kind": (GOOD.replace("kind: draw", "kind: drow"), "unknown node kind 'drow' (hint: did you mean 'draw'?)", 7, 11),
    "wrong_type": (GOOD.replace("version: 1", "version: 1\ndescription: [1, 2]"), "wrong type or value", 2, 14),
    "missing_key": (GOOD.replace("    prompt: \"{{ inputs.prompt }}\"\n", ""), "missing required key 'prompt'", 6, 3),
    "dangling_edge": (GOOD.replace("[draw, END]", "[draw, chek]"), "dangling edge: no node named 'chek'", 11, 12),
    "unreachable": (GOOD + "  - [other, END]\n".replace("  - [other, END]\n", "") .replace("", "")
                    .join([""]) + "", "", 0, 0),  # replaced below
    "cycle": ("""\
version: 1
name: t
nodes:
  draw: {kind: draw, prompt: a cat}
  check: {kind: inspect, image: nodes.draw.image, question: "ok?", verdict: yes_no}
  again:
    kind: router
    routes:
      - {when: nodes.check.verdict, to: END}
    default: draw
edges:
  - [START, draw]
  - [draw, check]
  - [check, again]
""", "cycle without a cap: draw -> check -> again -> draw", 10, 14),
    "loop_without_cap": ("""\
version: 1
name: t
nodes:
  redo:
    kind: loop
    body: [draw]
  draw: {kind: draw, prompt: a cat}
edges:
  - [START, redo]
  - [redo, END]
""", "missing required key 'max_iterations'", 4, 3),
    "undefined_variable": (GOOD.replace("inputs.prompt }}", "inputs.promt }}"),
                           "undefined template variable 'inputs.promt' (hint: did you mean 'prompt'?)", 8, 13),
    "undefined_root": (GOOD.replace("inputs.prompt }}", "state.prompt }}"), "undefined template variable 'state'", 8, 13),
    "bad_node_output": (GOOD.replace("  - [draw, END]", "  - [draw, look]\n  - [look, END]").replace(
        "edges:", "  look: {kind: think, prompt: \"{{ nodes.draw.txt }}\"}\nedges:"),
        "node 'draw' has no output 'txt'", 9, 31),
    "template_syntax": (GOOD.replace("inputs.prompt }}", "inputs.prompt }"), "template syntax error", 8, 13),
    "dead_end": (GOOD.replace("  - [draw, END]\n", ""), "dead end: node 'draw' has no outgoing edge (hint: add '- [draw, END]' to edges)", 6, 3),
    "bad_default": (GOOD.replace("{type: string}", "{type: integer, default: three}"), "wrong type: default 'three' is not of type integer", 4, 36),
    "unknown_function": (GOOD.replace("  - [draw, END]", "  - [draw, f]\n  - [f, END]").replace(
        "edges:", "  f: {kind: call, function: nope}\nedges:"), "unknown function 'nope'", 9, 29),
    "sandbox_attr": (GOOD.replace("inputs.prompt }}", "''.__class__ }}"), "attribute '__class__' is not allowed", 8, 13),
    "sandbox_import": (GOOD.replace('"{{ inputs.prompt }}"', "\"{% import 'os' as os %}x\""), "'import' is not allowed", 8, 13),
    "duplicate_key": (GOOD.replace("name: t\n", "name: t\nname: u\n"), "duplicate key 'name'", 3, 1),
    "yaml_syntax": (GOOD.replace("  - [draw, END]", "  - [draw, END"), "YAML syntax error", 12, 1),
    "subworkflow_escape": (GOOD.replace("  - [draw, END]", "  - [draw, sub]\n  - [sub, END]").replace(
        "edges:", "  sub: {kind: subworkflow, workflow: ../../etc/x.yaml}\nedges:"), "leaves the workflow's directory", 9, 38),
}
BROKEN["unreachable"] = (GOOD.replace("edges:", "  lonely: {kind: think, prompt: hi}\nedges:") + "  - [lonely, END]\n",
                         "unreachable node 'lonely': nothing leads to it from START", 9, 3)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_workflow_reports_message_and_position(case, tmp_path):
    text, message, line, col = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    matching = [i for i in info.value.issues if message in str(i)]
    assert matching, str(info.value)
    first = matching[0]
    assert (first.line, first.column) == (line, col), str(info.value)
    assert str(first).startswith(f"{first.file}:{line}:{col}: ")


def test_good_workflow_loads_and_errors_are_all_reported():
    assert loads_workflow(GOOD).spec.nodes["draw"].kind == "draw"
    bad = GOOD.replace("promt", "x").replace('"{{ inputs.prompt }}"', '"{{ inputs.a }}"').replace("[draw, END]", "[draw, nowhere]")
    with pytest.raises(WorkflowError) as info:
        loads_workflow(bad, label="w.yaml")
    assert len(info.value.issues) >= 1 and all(i.file == "w.yaml" for i in info.value.issues)


def test_call_nodes_need_a_registered_function():
    text = GOOD.replace("  - [draw, END]", "  - [draw, f]\n  - [f, END]").replace(
        "edges:", "  f: {kind: call, function: shout, args: {text: inputs.prompt}}\nedges:")
    register_function("shout", lambda text: text.upper())
    try:
        assert loads_workflow(text).functions["shout"]("a") == "A"
    finally:
        unregister_function("shout")
    with pytest.raises(WorkflowError, match="unknown function 'shout'"):
        loads_workflow(text)
    assert loads_workflow(text, functions={"shout": str.upper}).spec.nodes["f"].function == "shout"


@pytest.mark.parametrize("template", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ inputs.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ inputs.update({'a': 1}) }}",
])
def test_sandbox_refuses_escapes_at_render_time(template):
    with pytest.raises(SecurityError):
        render(template, {"inputs": {}, "nodes": {}, "loops": {}})


def test_sandbox_has_no_file_access():
    from jinja2.exceptions import TemplateNotFound

    with pytest.raises((TemplateNotFound, TypeError)):
        render("{% include '/etc/passwd' %}", {})
    with pytest.raises((TemplateNotFound, TypeError)):
        render("{% import 'os' as os %}", {})


def test_strict_undefined_at_render_time():
    from jinja2.exceptions import UndefinedError

    with pytest.raises(UndefinedError):
        render("{{ nodes.draw.text }}", {"inputs": {}, "nodes": {}, "loops": {}})


def test_every_bundled_workflow_validates_and_declares_the_schema():
    found = bundled_workflows()
    assert set(found) == {"draw-check-refine", "caption-then-edit", "visual-math-sketch", "multi-reference-edit",
                          "illustrated-story", "interleaved-story-graph", "plan-then-draw", "draw-inspect-refine-graph",
                          "visual-reasoning-graph", "visual-reasoning-sketch"}
    for name, path in found.items():
        wf = load_workflow(path)
        assert wf.name == name
        assert path.read_text().startswith("# yaml-language-server: $schema=./schema.json")


def test_json_schema_is_exported_and_up_to_date():
    schema = workflow_json_schema()
    assert schema["additionalProperties"] is False and "nodes" in schema["required"]
    shipped = json.loads((Path(__file__).parents[1] / "workflows" / "schema.json").read_text())
    assert shipped == schema, "regenerate with: lladauni schema --out workflows/schema.json"


def _cli(argv):
    parser = argparse.ArgumentParser(prog="lladauni")
    add_workflow_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_validate_and_schema(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN["unknown_key"][0])
    paths = [str(p) for p in bundled_workflows().values()]
    assert _cli(["validate", *paths]) == 0
    assert capsys.readouterr().out.count(": ok (") == 10
    assert _cli(["validate", paths[0], str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:8:5: nodes.draw.promt: unknown key 'promt'" in err.replace(str(bad.resolve()), str(bad)) or ":8:5:" in err
    assert _cli(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"].startswith("lladauni workflow")
