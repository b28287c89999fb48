"""Hostile workflows (issue 20): every small input that once meant unbounded work, a raw
traceback or an error without a place now gets a fast, clear answer.

* YAML: alias expansion (billion laughs), recursive aliases, nesting depth, file size, binary
  and non-UTF-8 files: a ``WorkflowError`` at file:line:col that names the limit, in well under
  a second (``lladauni validate`` too).
* Templates: limits caught at validation when the template says them (a literal ``range``,
  nested loops, a repeated string), enforced by the sandbox at run time otherwise (output size,
  loop iterations, calls, sequence/string growth, integer size).
* A template error at run time names the workflow file, the step and the template's line:col.
* Inputs are checked against their declared types before anything runs.
* Hypothesis fuzzing: random texts, random bytes, mutated bundled workflows and random
  templates either load/render or fail with the loader's/sandbox's error, never hang.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import signal
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lladauni.agent import ScriptedBackend
from lladauni.agent.workflows import (WorkflowError, WorkflowLimits, bundled_workflows, check_inputs, load_workflow,
                                      loads_workflow, run_workflow)
from lladauni.agent.workflows import schema as S
from lladauni.agent.workflows import templates as T
from lladauni.agent.workflows.cli import add_workflow_commands
from tests.test_workflows_validation import GOOD

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
COUNTS: Counter = Counter()  # fuzz cases tried / handled per test (a lost case fails the test)


@contextlib.contextmanager
def within(seconds: float, *, hang: float = 10.0):
    """The block must finish in ``seconds``; one that runs past ``hang`` seconds is stopped (SIGALRM)."""

    def alarm(*_):
        raise TimeoutError(f"still running after {hang} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, hang)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0
    assert elapsed < seconds, f"took {elapsed:.2f} s (bound {seconds} s)"


def _cli(argv):
    parser = argparse.ArgumentParser(prog="lladauni")
    add_workflow_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


SCOPE = {"inputs": {"prompt": "x", "n": 0}, "nodes": {}, "loops": {}}


# ------------------------------------------------------------------------------------ YAML
HOSTILE_YAML = {
    "billion_laughs": (_laughs(), "max_nodes"),
    "laughs_inside_a_workflow": (GOOD + "description: " + "\n" + _laughs().replace("a0:", "x0:"), "max_nodes"),
    "self_alias_sequence": ("a: &a [1, *a]\n", "recursive alias"),
    "self_alias_mapping": ("a: &a {b: *a}\n", "recursive alias"),
    "deep_flow_sequence": ("[" * 20000 + "]" * 20000, "max_depth"),
    "deep_flow_mapping": ("{" * 20000 + "}" * 20000, "max_depth"),
    "deep_block_sequence": ("- " * 20000 + "x\n", "max_depth"),
    "deep_value": (GOOD.replace("name: t", "name: t\ndescription: " + "[" * 20000 + "]" * 20000), "max_depth"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_hostile_yaml_fails_fast_with_the_limit_named(case, tmp_path):
    text, limit = HOSTILE_YAML[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    with within(1.0), pytest.raises(WorkflowError) as info:
        load_workflow(path)
    message = str(info.value)
    assert limit in message and "Traceback" not in message
    issue = info.value.issues[0]
    assert issue.file.endswith(f"{case}.yaml") and issue.line >= 1 and issue.column >= 1
    if limit.startswith("max_"):
        # the limit, the value found and how to raise it: the keyword argument and the constant
        assert f"WorkflowLimits({limit}=" in message and "lladauni.agent.workflows.schema.MAX_" in message


def test_a_recursive_alias_is_refused_where_the_alias_is():
    with pytest.raises(WorkflowError) as info:
        loads_workflow("version: 1\nname: t\nnodes: &n\n  a: {kind: think, prompt: *n}\n", label="w.yaml")
    issue = info.value.issues[0]
    assert (issue.line, issue.column) == (4, 28) and "recursive alias '*n'" in issue.message


def test_billion_laughs_names_the_expanded_count_and_where():
    with pytest.raises(WorkflowError) as info:
        loads_workflow(_laughs(), label="laughs.yaml")
    issue = info.value.issues[0]
    assert issue.file == "laughs.yaml" and issue.line >= 5  # an alias of a later level crosses the limit
    assert "max_nodes=100000" in str(issue) and "expand" in issue.message


def test_modest_aliases_and_depth_still_load_and_limits_can_be_raised(monkeypatch):
    shared = GOOD.replace("nodes:", "backend:\n  image: &opts {steps: 8}\n  edit: *opts\nnodes:")
    assert loads_workflow(shared).spec.backend.edit.steps == 8
    deep = GOOD.replace("prompt: {type: string}", "prompt: {type: string}\n  d: {type: json, default: "
                        + "[" * 80 + "]" * 80 + "}")
    with pytest.raises(WorkflowError, match="max_depth=64"):
        loads_workflow(deep)
    expected: list = []
    for _ in range(79):
        expected = [expected]
    assert loads_workflow(deep, limits=WorkflowLimits(max_depth=100)).spec.inputs["d"].default == expected
    monkeypatch.setattr(S, "MAX_YAML_DEPTH", 100)  # the constant is read when the limits are made
    assert loads_workflow(deep).name == "t"


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.write(GOOD.encode())
        f.seek(50 * 1024 * 1024)
        f.write(b"\n")
    with within(0.5), pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert "max_bytes=65536" in str(info.value) and "52428" in str(info.value)
    with pytest.raises(WorkflowError, match="max_bytes"):
        loads_workflow(GOOD + "#" * 70_000)
    big = GOOD + "description: '" + "x" * 70_000 + "'\n"
    assert loads_workflow(big, limits=WorkflowLimits(max_bytes=100_000)).name == "t"


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"


@pytest.mark.parametrize("data,message,where", [
    (PNG, "not UTF-8 text", (1, 1)),
    (b"version: 1\nname: caf\xe9\n", "not UTF-8 text", (2, 10)),
    (b"version: 1\nname: t\x00\x00\n", "binary", (2, 8)),
    ("version: 1\n".encode("utf-16"), "not UTF-8 text", (1, 1)),
    (b"version: 1\nname: \x07bell\n", "control character", (2, 7)),
])
def test_binary_and_non_utf8_files_get_a_clear_error(tmp_path, data, message, where):
    path = tmp_path / "bin.yaml"
    path.write_bytes(data)
    with within(1.0), pytest.raises(WorkflowError) as info:
        load_workflow(path)
    issue = info.value.issues[0]
    assert message in issue.message and (issue.line, issue.column) == where, str(info.value)


@pytest.mark.parametrize("value,where", [
    ("9" * 5000, (2, 14)),  # an integer longer than Python converts
    ("2001-13-45", (2, 14)),  # a timestamp with no such month
    ("!!timestamp xyz", (2, 14)),
    ("!!float abc", (2, 14)),
    ("!!int abc", (2, 14)),
    ("!!bool maybe", (2, 14)),
    ("[1, !!int x]", (2, 18)),
    ("!!float", (2, 14)),  # found by the fuzzing below: an IndexError in PyYAML
])
def test_a_value_yaml_cannot_construct_is_an_error_at_its_place(value, where):
    with pytest.raises(WorkflowError) as info:
        loads_workflow(f"version: 1\ndescription: {value}\n", label="v.yaml")
    issue = info.value.issues[0]
    assert "cannot read this value" in issue.message and (issue.line, issue.column) == where, str(info.value)


def test_cli_validate_answers_each_hostile_file_in_well_under_a_second(tmp_path, capsys):
    files = []
    for case, (text, _) in sorted(HOSTILE_YAML.items()):
        files.append(tmp_path / f"{case}.yaml")
        files[-1].write_text(text, encoding="utf-8")
    files.append(tmp_path / "png.yaml")
    files[-1].write_bytes(PNG)
    for f in files:
        with within(1.0):
            assert _cli(["validate", str(f)]) == 1
        err = capsys.readouterr().err
        assert f.name in err and "Traceback" not in err and "RecursionError" not in err


def test_a_subworkflow_diamond_loads_and_compiles_each_file_once(tmp_path):
    """Level i uses level i+1 twice: 2**16 loads and compiles if each use loaded its file again."""
    from lladauni.agent.workflows import compile_workflow

    for i in range(16):
        (tmp_path / f"l{i}.yaml").write_text(
            f"version: 1\nname: l{i}\nnodes:\n  a: {{kind: subworkflow, workflow: l{i + 1}.yaml}}\n"
            f"  b: {{kind: subworkflow, workflow: l{i + 1}.yaml}}\nedges: [[START, a], [a, b], [b, END]]\n")
    (tmp_path / "l16.yaml").write_text("version: 1\nname: l16\nnodes: {a: {kind: think, prompt: hi}}\n"
                                       "edges: [[START, a], [a, END]]\n")
    with within(5.0, hang=20.0):
        wf = load_workflow(tmp_path / "l0.yaml")
        assert wf.children["a"] is wf.children["b"]
        compile_workflow(wf)


def test_limits_reject_nonsense_values():
    for bad in (0, -1, True, "64", float("inf")):
        with pytest.raises(ValueError, match="WorkflowLimits.max_depth"):
            WorkflowLimits(max_depth=bad)


# ---------------------------------------------------------------------- templates: static
STATIC = {
    "nested_ranges": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                      "max_loop_iterations", "10000100000"),  # 100000 outer passes and 100000 inner ones in each
    "literal_range": ("{% for i in range(10000000) %}x{% endfor %}", "max_range", "10000000"),
    "string_repeat": ("{{ inputs.prompt * 200000000 }}", "max_output_chars", "200000000"),
    "literal_repeat": ("{{ 'ab' * 2000000 }}", "max_output_chars", "4000000"),
    "list_repeat": ("{{ [0, 1] * 10000000 }}", "max_range", "20000000"),
    "huge_power": ("{{ 10 ** 100000 }}", "max_int_digits", "100001"),
    "loop_over_repeat": ("{% for i in range(1000) %}{% for c in 'x' * 1000 %}{% endfor %}{% endfor %}",
                         "max_loop_iterations", "1001000"),
}


@pytest.mark.parametrize("case", sorted(STATIC))
def test_statically_knowable_template_limits_fail_at_validation(case):
    template, limit, found = STATIC[case]
    text = GOOD.replace('"{{ inputs.prompt }}"', "'" + template.replace("'", "''") + "'")
    with within(1.0), pytest.raises(WorkflowError) as info:
        loads_workflow(text, label="t.yaml")
    issue = info.value.issues[0]
    assert (issue.line, issue.column) == (8, 13) and issue.key == "nodes.draw.prompt", str(info.value)
    assert f"{limit}=" in str(issue) and found in issue.message and "WorkflowLimits(" in str(issue)


@pytest.mark.parametrize("template", [
    "{{ inputs.n * 200000000 }}",  # arithmetic on a number, not a repetition
    "{% for i in range(1000) %}{% else %}{% for j in range(1000) %}{% endfor %}{% endfor %}",  # else runs once
    "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}",
    "{{ inputs.prompt * 3 }}{{ 2 ** 64 }}{{ [0] * 100 }}",
    "{{ range(100000)|list|length }}",
])
def test_templates_within_the_limits_still_validate(template):
    text = GOOD.replace("prompt: {type: string}", "prompt: {type: string}\n  n: {type: integer, default: 2}")
    text = text.replace('"{{ inputs.prompt }}"', "'" + template + "'")
    assert loads_workflow(text).name == "t"


# --------------------------------------------------------------------- templates: runtime
RUNTIME = {
    "repeat_from_input": ("{{ inputs.prompt * inputs.n }}", {"n": 200_000_000}, "max_output_chars"),
    "nested_input_ranges": ("{% for i in range(inputs.n) %}{% for j in range(inputs.n) %}{% endfor %}{% endfor %}",
                            {"n": 100_000}, "max_loop_iterations"),
    "range_from_input": ("{% for i in range(inputs.n) %}{% endfor %}", {"n": 10 ** 12}, "max_range"),
    "loop_output": ("{% for i in range(inputs.n) %}{{ inputs.prompt }}{% endfor %}",
                    {"n": 100_000, "prompt": "x" * 1000}, "max_output_chars"),
    "literal_text_in_a_loop": ("{% for i in range(inputs.n) %}" + "y" * 100 + "{% endfor %}", {"n": 100_000},
                               "max_output_chars"),
    "captured_output": ("{% set s %}{% for i in range(inputs.n) %}{{ inputs.prompt }}{% endfor %}{% endset %}{{ s|length }}",
                        {"n": 100_000, "prompt": "x" * 1000}, "max_output_chars"),
    "doubling_concat": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s|length }}", {}, "max_output_chars"),
    "doubling_plus": ("{% set ns = namespace(s=[0]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s|length }}", {}, "max_range"),
    "squaring": ("{% set ns = namespace(v=3) %}{% for i in range(64) %}{% set ns.v = ns.v * ns.v %}{% endfor %}{{ ns.v > 0 }}",
                 {}, "max_int_digits"),
    "power_tower": ("{{ inputs.n ** inputs.n }}", {"n": 10 ** 6}, "max_int_digits"),
    "ljust": ("{{ 'x'.ljust(inputs.n) }}", {"n": 10 ** 9}, "max_output_chars"),
    "center_filter": ("{{ 'x'|center(inputs.n) }}", {"n": 10 ** 9}, "max_output_chars"),
    "replace_amplifies": ("{{ (inputs.prompt * 1000)|replace('', inputs.prompt * 1000) }}", {}, "max_output_chars"),
    "shared_lists_printed": ("{{ [[0] * 100000] * 100000 }}", {}, "max_output_chars"),
    "shared_lists_joined": ("{{ ([[0] * 100000] * 100000)|join(',') }}", {}, "max_output_chars"),
    "format_width": ("{{ '{:>999999999}'.format(1) }}", {}, "max_output_chars"),
    "percent_width": ("{{ '%999999999d' % 1 }}", {}, "max_output_chars"),
    "format_filter": ("{{ '%999999999d'|format(1) }}", {}, "max_output_chars"),
    "indent_lines": ("{{ ('a\n' * 100000)|indent(1000) }}", {}, "max_output_chars"),
    "wordwrap_amplifies": ("{{ ('x' * 100000)|wordwrap(1, true, 'y' * 1000) }}", {}, "max_output_chars"),
    "tojson_indent": ("{{ range(100000)|list|tojson(indent=100000) }}", {}, "max_output_chars"),
    "macro_fanout": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", {},
                     "max_calls"),
    "expandtabs": ("{{ ('\t' * 1000).expandtabs(100000) }}", {}, "max_output_chars"),
}


@pytest.mark.parametrize("case", sorted(RUNTIME))
def test_runtime_template_limits_stop_the_work_fast(case):
    template, inputs, limit = RUNTIME[case]
    scope = {**SCOPE, "inputs": {**SCOPE["inputs"], **inputs}}
    with within(1.0), pytest.raises(S.WorkflowLimitError) as info:
        T.render(template, scope)
    message = str(info.value)
    assert info.value.limit == limit and f"{limit}=" in message and "WorkflowLimits(" in message, message


def test_expressions_are_bounded_too():
    scope = {**SCOPE, "inputs": {"prompt": "ab", "n": 10 ** 9}}
    with within(1.0), pytest.raises(S.WorkflowLimitError, match="max_output_chars"):
        T.evaluate("inputs.prompt * inputs.n", scope)
    with within(1.0), pytest.raises(S.WorkflowLimitError, match="max_range"):
        T.evaluate("range(inputs.n)|list", scope)


def test_runtime_limits_can_be_raised_and_normal_templates_render_as_before():
    scope = {**SCOPE, "inputs": {"prompt": "ab", "n": 1_000_000}}
    with pytest.raises(S.WorkflowLimitError, match="max_output_chars=1000000"):
        T.render("{{ inputs.prompt * inputs.n }}", scope)
    out = T.render("{{ inputs.prompt * inputs.n }}", scope, limits=WorkflowLimits(max_output_chars=3_000_000))
    assert len(out) == 2_000_000
    assert T.render("{% for w in ['a', 'b'] %}{{ loop.index }}{{ w * 2 }} {% endfor %}|{{ [1, 2]|join('-') }}", SCOPE) \
        == "1aa 2bb |1-2"
    assert T.evaluate("inputs.prompt ~ '!'", SCOPE) == "x!" and T.evaluate("2 ** 10 + 1", SCOPE) == 1025
    assert T.render("{{ 'a' ~ 1 }}{{ '%s=%d' % ('k', 3) }}{{ '{}/{}'.format(1, 2) }}", SCOPE) == "a1k=31/2"


def test_lipsum_is_not_in_the_sandbox():
    with pytest.raises(WorkflowError, match="undefined template variable 'lipsum'"):
        loads_workflow(GOOD.replace("inputs.prompt }}", "lipsum(1000000000) }}"))


# ------------------------------------------------------------------ errors with a place
PLACED = """\
version: 1
name: placed
inputs:
  data: {type: json, default: {}}
  prompt: {type: string, default: x}
  n: {type: integer, default: 1}
nodes:
  ask:
    kind: think
    prompt: |
      Line one {{ inputs.prompt }}
      line two
      line three {{ inputs.data.missing }}
edges:
  - [START, ask]
  - [ask, END]
"""


def test_a_template_error_at_run_time_names_the_file_step_and_line_col(tmp_path):
    path = tmp_path / "placed.yaml"
    path.write_text(PLACED, encoding="utf-8")
    r = run_workflow(path, {}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "failed" and r.error.startswith("ask failed: ")
    assert "placed.yaml:13:7: nodes.ask.prompt: " in r.error and "missing" in r.error, r.error


def test_a_limit_hit_at_run_time_names_the_limit_and_the_place(tmp_path):
    path = tmp_path / "placed.yaml"
    path.write_text(PLACED.replace("{{ inputs.data.missing }}", "{{ inputs.prompt * inputs.n }}"), encoding="utf-8")
    with within(2.0):
        r = run_workflow(path, {"n": 200_000_000}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "failed" and "placed.yaml:13:7: nodes.ask.prompt: " in r.error
    assert "max_output_chars=1000000" in r.error, r.error


def test_limits_given_at_load_hold_for_the_run(tmp_path):
    path = tmp_path / "placed.yaml"
    path.write_text(PLACED.replace("{{ inputs.data.missing }}", "{{ (inputs.prompt * inputs.n)|length }}"),
                    encoding="utf-8")
    wf = load_workflow(path, limits=WorkflowLimits(max_output_chars=2_000_000, max_built=10_000_000))
    r = run_workflow(wf, {"n": 1_500_000}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "done" and r.error is None, r.error
    r = run_workflow(path, {"n": 1_500_000}, ScriptedBackend(), run_dir=tmp_path / "run2")
    assert r.status == "failed" and "max_output_chars=1000000" in r.error


def test_an_expression_error_at_run_time_has_its_place(tmp_path):
    text = PLACED.replace("    prompt: |\n      Line one {{ inputs.prompt }}\n      line two\n      line three "
                          "{{ inputs.data.missing }}\n", "    prompt: hi\n    images: [inputs.data.picture]\n")
    path = tmp_path / "expr.yaml"
    path.write_text(text, encoding="utf-8")
    r = run_workflow(path, {}, ScriptedBackend(), run_dir=tmp_path / "run")
    assert r.status == "failed" and "expr.yaml:11:14: nodes.ask.images[0]: " in r.error, r.error


# ------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("inputs,message", [
    ({}, "input 'prompt' (string) is required"),
    ({"prompt": 3}, "input 'prompt' expects a string, got int 3"),
    ({"prompt": "fox", "max_rounds": "many"}, "input 'max_rounds' expects an integer, got str 'many'"),
    ({"prompt": "fox", "max_rounds": True}, "input 'max_rounds' expects an integer, got bool True"),
    ({"prompt": "fox", "max_rounds": 2.5}, "input 'max_rounds' expects an integer, got float 2.5"),
    ({"prompt": None}, "input 'prompt' expects a string, got NoneType None"),
    ({"prompt": "a \ud800 circle"}, "input 'prompt' expects a string: it holds a lone surrogate at index 2"),
])
def test_inputs_are_checked_before_anything_runs(tmp_path, inputs, message):
    b = ScriptedBackend()
    with pytest.raises(ValueError) as info:
        run_workflow("draw-check-refine", inputs, b, run_dir=tmp_path / "run")
    assert message in str(info.value), str(info.value)
    assert b.calls == [] and not (tmp_path / "run" / "run.json").exists()


def test_check_inputs_accepts_what_the_run_would_accept(tmp_path):
    from PIL import Image

    wf = loads_workflow("""\
version: 1
name: kinds
inputs:
  s: {type: string}
  i: {type: integer}
  f: {type: number}
  b: {type: boolean}
  j: {type: json}
  im: {type: image}
  ims: {type: images, default: []}
nodes:
  a: {kind: think, prompt: hi}
edges: [[START, a], [a, END]]
""")
    pic = tmp_path / "p.png"
    Image.new("RGB", (4, 4)).save(pic)
    ok = {"s": "x", "i": "3", "f": "2.5", "b": "yes", "j": '{"a": 1}', "im": str(pic), "ims": f"{pic},{pic}"}
    check_inputs(wf, ok)
    check_inputs(wf, {**ok, "i": 3, "f": 2, "b": False, "j": [1], "im": Image.new("RGB", (2, 2)), "ims": [str(pic)]})
    bad = [({"f": "x"}, "input 'f' expects a number, got str 'x'"),
           ({"b": "perhaps"}, "input 'b' expects a boolean"),
           ({"j": "{not json"}, "input 'j' expects JSON"),
           ({"im": str(tmp_path / "none.png")}, "input 'im' expects an image: no file"),
           ({"im": 3}, "input 'im' expects an image, got int 3"),
           ({"ims": [3]}, "input 'ims' expects images"),
           ({"zzz": 1}, "unknown input 'zzz'")]
    for change, message in bad:
        with pytest.raises(ValueError) as info:
            check_inputs(wf, {**ok, **change})
        assert message in str(info.value), str(info.value)


# ------------------------------------------------------------------------------ fuzzing
def _loads_or_workflow_error(load) -> str:
    """Run ``load`` under a hang guard: 'loaded' or 'refused' (WorkflowError); anything else fails."""
    COUNTS["tried"] += 1
    try:
        with within(5.0, hang=10.0):
            load()
    except WorkflowError as exc:
        assert exc.issues and all(i.line >= 1 and i.column >= 1 for i in exc.issues)
        COUNTS["handled"] += 1
        return "refused"
    COUNTS["handled"] += 1
    COUNTS["loaded"] += 1
    return "loaded"


YAML_BITS = ["&a ", "*a", "&b ", "*b", "[", "]", "{", "}", ": ", "- ", "\n", "\n  ", "\n    ", ", ", "? ", "'", '"',
             "|\n  ", ">-\n  ", "!!str ", "!!python/object:os.system ", "{{ ", " }}", "{% ", " %}", "version: 1",
             "name: t", "nodes:", "edges:", "kind: think", "prompt: ", "[START, a]", "<<: *a", "\t", "\x00", "\ufeff",
             "\ud800", "#", "---\n", "...\n", "%YAML 1.1\n", "1e999", "~", "é", "0x", "a", "!!int ", "!!bool ",
             "!!timestamp ", "!!float ", "!!binary ", "!!set ", "2001-13-45", "9" * 4400, "0o", "1_0"]


@FUZZ
@given(st.lists(st.sampled_from(YAML_BITS), max_size=60))
def test_fuzz_yaml_fragments(parts):
    _loads_or_workflow_error(lambda: loads_workflow("".join(parts)))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_random_text(text):
    _loads_or_workflow_error(lambda: loads_workflow(text))


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "w.yaml"
    path.write_bytes(data)
    _loads_or_workflow_error(lambda: load_workflow(path))


_BUNDLED = {name: p.read_text(encoding="utf-8") for name, p in bundled_workflows().items()}


HOSTILE_TEMPLATES = ["{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "{{ inputs.prompt * 200000000 }}", "{{ 9 ** 9 ** 9 }}", "{{ lipsum(10**9) }}", "{{ ''.__class__ }}",
                     "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{{ nodes.nope.text }}"]


def _mutate(text: str, rng: random.Random) -> str:
    """One random edit: of characters (delete, repeat, insert a YAML token, change case), of lines
    (delete, repeat), of words (one replaced by another of the file), or a hostile template."""
    i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    lines = text.split("\n")
    k = rng.randrange(len(lines))
    op = rng.randrange(8)
    if op == 0:
        return text[:i] + text[j:]
    if op == 1:
        return text[:i] + text[i:j] * rng.randint(2, 5) + text[j:]
    if op == 2:
        return text[:i] + rng.choice(YAML_BITS) + text[i:]
    if op == 3:
        return text[:i] + text[i:j].swapcase() + text[j:]
    if op in (4, 5):
        return "\n".join(lines[:k] + lines[k + 1:] if op == 4 else lines[:k + 1] + lines[k:])
    if op == 6:
        words = re.findall(r"[A-Za-z_]+", text)
        old, new = rng.choice(words), rng.choice(words)
        return text.replace(old, new, 1)
    return re.sub(r'"\{\{[^"\n]*"', lambda m: '"' + rng.choice(HOSTILE_TEMPLATES) + '"', text, count=1)


@FUZZ
@given(st.sampled_from(sorted(_BUNDLED)), st.integers(0, 2 ** 32 - 1), st.integers(1, 4))
def test_fuzz_mutated_bundled_workflows(name, seed, edits):
    rng = random.Random(seed)
    text = _BUNDLED[name]
    for _ in range(edits):
        text = _mutate(text, rng)
    base = bundled_workflows()[name].parent
    _loads_or_workflow_error(lambda: loads_workflow(text, label=f"{name}.yaml", base_dir=base))


JINJA_BITS = ["{{ ", " }}", "{% ", " %}", "for i in ", "range(", ")", "(", "endfor", "if ", "endif", "else", "set x = ",
              "x", "i", "inputs.prompt", "inputs.n", "nodes", "loops", " * ", " ** ", " ~ ", " + ", " % ", " // ", "|",
              "join", "center", "replace", "indent", "format", "tojson", "list", "length", "string", "wordwrap",
              "'ab'", "'%9d'", "'{:>9}'", "9", "99999", "999999999", "100000", "[0]", "[", "]", ", ", ".format",
              ".ljust", ".__class__", "namespace(", "macro f(n)", "endmacro", "f(", "loop.index", "recursive",
              "'\n'", "-", "lipsum", "cycler"]
TEMPLATE_ERRORS = (Exception,)  # any ordinary error is an answer; a hang, MemoryError or RecursionError is not


def _render_within_limits(template: str, n: int) -> None:
    """Check and render ``template``: the check never raises; the render gives text within the
    output cap or an ordinary error, in bounded time (a hang, MemoryError or RecursionError is lost)."""
    COUNTS["tried"] += 1
    scope = {"inputs": {"prompt": "ab", "n": n, "items": list(range(50))}, "nodes": {}, "loops": {}}
    with within(6.0, hang=12.0):
        T.check(template, expression=False, inputs=["prompt", "n", "items"], node_fields={}, loops=[])
        try:
            out = T.render(template, scope)
        except (MemoryError, RecursionError):
            raise
        except TEMPLATE_ERRORS as exc:
            COUNTS["limit" if isinstance(exc, S.WorkflowLimitError) else "error"] += 1
            out = ""
    assert len(out) <= S.WorkflowLimits().max_output_chars
    COUNTS["handled"] += 1


@FUZZ
@given(st.lists(st.sampled_from(JINJA_BITS), max_size=25), st.integers(0, 10 ** 6))
def test_fuzz_template_fragments_under_the_sandbox_limits(parts, n):
    _render_within_limits("".join(parts), n)


ATOMS = ["inputs.prompt", "inputs.n", "inputs.items", "'ab'", "9", "99999", "[0, 1]", "range(inputs.n)", "range(9999)",
         "ns.s", "loop.index"]
BINARY = [" * ", " ** ", " + ", " ~ ", " % ", " // "]
FILTERS = ["join", "join(inputs.prompt * 999)", "list", "length", "center(99999)", "replace('', inputs.prompt)",
           "indent(999)", "format(inputs.n)", "tojson(indent=999)", "wordwrap(1, true, 'xy' * 99)", "string", "sum",
           "sort", "unique|list", "batch(999)|list", "map('string')|join"]
METHODS = [".ljust(inputs.n)", ".split()", ".format(inputs.n, inputs.prompt)", ".join(inputs.items|map('string'))",
           ".expandtabs(999)", ".upper()"]
EXPR = st.recursive(
    st.sampled_from(ATOMS),
    lambda e: st.one_of(
        st.tuples(e, st.sampled_from(BINARY), e).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
        st.tuples(e, st.sampled_from(FILTERS)).map(lambda t: f"({t[0]}|{t[1]})"),
        st.tuples(e, st.sampled_from(METHODS)).map(lambda t: f"({t[0]}){t[1]}")),
    max_leaves=6)
BODY = st.recursive(
    EXPR.map(lambda x: "{{ " + x + " }}") | st.just("text ") | EXPR.map(lambda x: "{% set ns.s = ns.s ~ " + x + " %}"),
    lambda b: st.one_of(
        st.tuples(EXPR, st.lists(b, min_size=1, max_size=3)).map(
            lambda t: "{% for i in " + t[0] + " %}" + "".join(t[1]) + "{% endfor %}"),
        st.lists(b, min_size=1, max_size=3).map(lambda xs: "{% set c %}" + "".join(xs) + "{% endset %}{{ c|length }}"),
        st.lists(b, min_size=1, max_size=3).map(
            lambda xs: "{% macro f(k) %}" + "".join(xs) + "{% if k %}{{ f(k - 1) }}{{ f(k - 1) }}{% endif %}"
                       "{% endmacro %}{{ f(20) }}")),
    max_leaves=6)


# hypothesis's check that ``extend`` recurses misreads these (mapped tuples/lists of the argument);
# they do recurse: 177 of 200 drawn expressions nest two levels or more
@pytest.mark.filterwarnings("ignore:extend=.*argument, and thus can't actually recurse")
@FUZZ
@given(BODY, st.integers(0, 10 ** 6))
def test_fuzz_structured_templates_under_the_sandbox_limits(body, n):
    _render_within_limits("{% set ns = namespace(s='') %}" + body, n)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_figures():
    """Print the fuzz figures (``pytest -s``): cases tried and handled; a lost case fails its test."""
    yield
    print(f"\nhostile workflows fuzz: tried {COUNTS['tried']}, handled {COUNTS['handled']}, "
          f"lost {COUNTS['tried'] - COUNTS['handled']} ({dict(COUNTS)})")
