"""The typed task options (model_core.options) and every boundary derived from them.

Each option is walked through: its own validation, the sampler config it becomes, LLaDAUni's
signatures, the workflow schema, the HTTP wire (client encode -> server decode), the CLI flags
and the MCP / LangChain tool schemas. Names, types, defaults and ranges must agree everywhere;
the expected SGLang-Omni names are written out here from its source (sglang-omni@8eea11fc), not
read from the code under test.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from lladauni.model_core import GenerationError, LLaDAUni
from lladauni.model_core.generation.sampling import REMASKING
from lladauni.model_core.options import (TASK_OPTIONS, ChatOptions, EditOptions, ImageOptions, InterleavedOptions,
                                         SamplingOptions, make_options, option_specs, sampler_config)

@pytest.fixture(scope="module")
def tiny_pipe(tiny_ckpt):
    return LLaDAUni.from_pretrained(tiny_ckpt, device="cpu", dtype=torch.float32)


ALL = [(task, s) for task, cls in TASK_OPTIONS.items() for s in option_specs(cls)]
IDS = [f"{t}.{s.name}" for t, s in ALL]


def other_value(s):
    """A valid value that differs from the default."""
    if s.type is bool:
        return not s.default
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    if s.type is int:
        v = max(s.default or 0, s.ge or 0, (s.gt or 0) + 1) + 1
        return v * (s.multiple_of or 1) if s.multiple_of else v
    lo = s.ge if s.ge is not None else (s.gt if s.gt is not None else 0.0)
    hi = s.le if s.le is not None else lo + 2.0
    v = (lo + hi) / 2
    return v if v != s.default else (v + hi) / 2


def bad_values(s):
    out = ["x"] if s.type is not str else [3]
    if s.type is not bool:
        out.append(True)
    if s.ge is not None:
        out.append(s.type(s.ge) - (1 if s.type is int else 0.5))
    if s.gt is not None:
        out.append(s.type(s.gt))
    if s.le is not None:
        out.append(s.type(s.le) + 1)
    if s.multiple_of:
        out.append(s.multiple_of * 3 + 1)
    if s.choices:
        out.append("not-a-choice")
    if s.type is float:
        out.append(math.nan)
    if not s.optional:
        out.append(None)
    return out


# ------------------------------------------------------------------------------ declarations
@pytest.mark.parametrize("task,s", ALL, ids=IDS)
def test_each_option_has_help_a_valid_default_and_refuses_bad_values_by_name(task, s):
    cls = TASK_OPTIONS[task]
    assert s.help and len(s.help) > 8
    assert getattr(cls(), s.name) == s.default
    assert getattr(cls(**{s.name: other_value(s)}), s.name) == other_value(s)
    for bad in bad_values(s):
        with pytest.raises(ValueError) as e:
            cls(**{s.name: bad})
        assert f"{s.name}={bad!r}" in str(e.value)


def test_published_defaults_and_ranges():
    """The official API's defaults (MODEL_SPEC §5.2) and SGLang-Omni's ranges, written out."""
    i, e, n, c = ImageOptions(), EditOptions(), InterleavedOptions(), ChatOptions()
    assert (c.steps, c.gen_length, c.block_length, c.threshold, c.temperature) == (32, 2048, 32, 0.95, 0.0)
    assert (i.steps, i.cfg_scale, i.cfg_rescale, i.mode, i.thinking_steps, i.thinking_gen_length) == (16, 4.0, 0.7, "normal", 32, 4096)
    assert (e.steps, e.cfg_text_scale, e.cfg_image_scale) == (8, 4.0, 0.0)
    assert (n.max_frames, n.text_gen_length, n.steps, n.image_steps) == (4, 1024, 32, 16)
    assert i.decode and i.image_h is None and not i.use_sprint and i.cache == "auto"
    for bad in (dict(image_h=100), dict(image_w=16), dict(cfg_rescale=1.5)):
        with pytest.raises(ValueError):
            ImageOptions(**bad)
    with pytest.raises(ValueError, match="cfg_scale=0.5"):  # SGLang-Omni: cfg_scale >= 1 for text to image
        ImageOptions(cfg_scale=0.5)
    InterleavedOptions(cfg_scale=0.0)  # interleaved: >= 0 there
    assert typing_choices("remasking") == tuple(REMASKING)


def typing_choices(name):
    return next(s for s in option_specs(SamplingOptions) if s.name == name).choices


def test_unknown_option_names_are_refused_with_the_close_ones():
    with pytest.raises(TypeError, match="no option 'step'.*steps"):
        make_options(ImageOptions, {"step": 3})
    with pytest.raises(TypeError) as e:
        make_options(ImageOptions, {"cfg_scal": 3})
    assert str(e.value).endswith("options: cfg_rescale, cfg_scale")  # the close names only
    assert make_options(ImageOptions, {"steps": 3}, {"steps": None}, {"seed": 1}) == ImageOptions(steps=3, seed=1)


# -------------------------------------------------------------------------- sampler config
# option -> where it lands in SamplerConfig (an independent table, written out by hand)
CONFIG_PATH = {
    "steps": "steps", "block_length": "block_length", "threshold": "threshold", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "minimal_topk": "minimal_topk", "remasking": "sprint.remasking",
    "keep_ratio": "sprint.keep_ratio", "cache_warmup_steps": "sprint.cache_warmup_steps",
    "confidence_alpha": "sprint.confidence_alpha", "image_keep_ratio": "sprint.image_keep_ratio",
    "text_keep_ratio": "sprint.text_keep_ratio", "sprint_legacy_scores": "sprint.legacy_scores",
    "sprint_legacy_padding": "sprint.legacy_padding", "eos_early_stop": "eos_early_stop", "cache": "cache",
    "trace": "record_trace",
}


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("s", [s for s in option_specs(SamplingOptions) if s.name not in ("seed", "use_sprint")],
                         ids=lambda s: s.name)
def test_every_sampling_option_reaches_the_sampler(s):
    v = other_value(s)
    if s.name == "minimal_topk":
        v = 2
    cfg = sampler_config(SamplingOptions(**{s.name: v}), gen_length=64)
    assert _get(cfg, CONFIG_PATH[s.name]) == v
    assert _get(sampler_config(SamplingOptions(), gen_length=64), CONFIG_PATH[s.name]) == s.default
    assert set(CONFIG_PATH) | {"seed", "use_sprint"} == {x.name for x in option_specs(SamplingOptions)}


def test_use_sprint_selects_the_sprint_cache_and_phases_replace_settings():
    assert sampler_config(SamplingOptions(use_sprint=True, cache="none"), gen_length=8).cache == "sprint"
    assert sampler_config(SamplingOptions(cache="none"), gen_length=8).cache == "none"
    o = ImageOptions(thinking_steps=5, thinking_temperature=0.5)
    cfg = sampler_config(o, gen_length=8, steps=o.thinking_steps, temperature=o.thinking_temperature)
    assert (cfg.steps, cfg.temperature, cfg.threshold) == (5, 0.5, 0.95)
    with pytest.raises(TypeError, match="unknown phase"):
        sampler_config(o, gen_length=8, gen_length_again=3)


# ------------------------------------------------------------------------------ the facade
@pytest.mark.parametrize("task,method", [("chat", "chat"), ("understand", "understand"), ("image", "generate_image"),
                                         ("edit", "edit_image"), ("interleaved", "generate_interleaved")])
def test_llada_methods_show_every_option_with_its_default(task, method):
    params = inspect.signature(getattr(LLaDAUni, method)).parameters
    for s in option_specs(TASK_OPTIONS[task]):
        assert params[s.name].default == s.default and params[s.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert s.name in getattr(LLaDAUni, method).__doc__
    assert {"options", "generator", "progress"} <= set(params)


def test_the_official_switches_are_reachable_from_the_facade(tiny_pipe):
    """Thinking mode with the official SPRINT (both legacy flags) runs from the public API, and
    the options reach the sampler (spied)."""
    seen = []
    real = tiny_pipe.sampler.generate

    def spy(prompt, cfg, **kw):
        seen.append(cfg)
        return real(prompt, cfg, **kw)

    tiny_pipe.sampler.generate = spy
    try:
        tiny_pipe.generate_image("a cat", mode="thinking", use_sprint=True, sprint_legacy_scores=True,
                                 sprint_legacy_padding=True, eos_early_stop=False, thinking_gen_length=32,
                                 thinking_steps=2, steps=2, image_h=256, image_w=256, decode=False)
    except GenerationError as exc:  # the tiny random model may write no image header; phase 1 ran regardless
        assert "image header" in str(exc)
    finally:
        tiny_pipe.sampler.generate = real
    first = seen[0]
    assert first.cache == "sprint" and first.sprint.legacy_scores and first.sprint.legacy_padding
    assert first.eos_early_stop is False and first.steps == 2 and first.gen_length == 32


def test_options_object_and_overrides_and_checkpoint_defaults(tiny_pipe):
    o = tiny_pipe.options_for("image", ImageOptions(steps=3), {"seed": 4})
    assert (o.steps, o.seed) == (3, 4)
    with pytest.raises(TypeError, match="expected ImageOptions"):
        tiny_pipe.options_for("image", EditOptions())
    with pytest.raises(TypeError, match="no option 'stepz'"):
        tiny_pipe.generate_image("x", stepz=3)
    with pytest.raises(ValueError, match="steps=0"):
        tiny_pipe.generate_image("x", steps=0)
    tiny_pipe.defaults = {**tiny_pipe.defaults, "options": {"image": {"steps": 5}}}
    try:
        assert tiny_pipe.default_options("image").steps == 5
        assert tiny_pipe.options_for("image", None, {"steps": 2}).steps == 2
    finally:
        tiny_pipe.defaults = {k: v for k, v in tiny_pipe.defaults.items() if k != "options"}


def test_a_checkpoint_with_bad_option_defaults_is_refused(tmp_path):
    from lladauni.model_core.pipeline import read_defaults

    (tmp_path / "lladauni.json").write_text('{"options": {"image": {"steps": 0}}}')
    with pytest.raises(ValueError, match=r"options=.*image: steps=0"):
        read_defaults(tmp_path)
    (tmp_path / "lladauni.json").write_text('{"options": {"paint": {}}}')
    with pytest.raises(ValueError, match="tasks from"):
        read_defaults(tmp_path)


# ------------------------------------------------------------------------------ boundaries
def _walk():
    """(task, spec) pairs the HTTP wire carries: all but the local-only ones, and understanding's
    prompt form (over HTTP understanding is a chat with the image; see the next test)."""
    return [(t, s) for t, s in ALL if s.name != "trace" and (t, s.name) != ("understand", "template")]


@pytest.mark.parametrize("task,s", _walk(), ids=[f"{t}.{s.name}" for t, s in _walk()])
def test_every_option_travels_the_wire_and_back(task, s):
    from lladauni.agent.wire import decode_options, encode_options

    if s.name == "decode":
        pytest.skip("decode is local only: covered below")
    v = other_value(s)
    top, ig = encode_options(task, {s.name: v})
    server_task = "chat" if task == "understand" else task
    assert decode_options(server_task, top, ig) == {s.name: v}


def test_http_understanding_refuses_a_prompt_form_it_cannot_send():
    import httpx

    from lladauni.agent import HTTPBackend
    from lladauni.agent.wire import WireError

    sent = []
    b = HTTPBackend("http://127.0.0.1:9", transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500)))
    with pytest.raises(WireError, match="template='chat'"):
        b.understand(object(), "q", template="chat")
    assert sent == []
    b.close()


def test_local_only_options_are_refused_not_dropped():
    from lladauni.agent.wire import WireError, encode_options

    assert encode_options("image", {"decode": True, "trace": False}) == ({}, {})
    for bad in ({"decode": False}, {"trace": True}):
        with pytest.raises(WireError, match=list(bad)[0]):
            encode_options("image", bad)


# The SGLang-Omni names, from its server (protocol.py ImageGenerationParams and
# proto/segments.py InterleavedGenerationParams at sglang-omni@8eea11fc), written out.
SGLANG_WIRE = {
    "image": {"steps": ("ig", "dllm_steps"), "decoder_steps": ("ig", "decoder_steps"), "cfg_scale": ("ig", "cfg_scale"),
              "cfg_rescale": ("ig", "cfg_rescale"), "image_h": ("ig", "image_h"), "image_w": ("ig", "image_w"),
              "mode": ("ig", "mode"), "temperature": ("top", "temperature"), "top_p": ("top", "top_p"),
              "top_k": ("top", "top_k")},
    "edit": {"steps": ("ig", "dllm_steps"), "decoder_steps": ("ig", "decoder_steps"),
             "cfg_text_scale": ("ig", "cfg_text_scale"), "cfg_image_scale": ("ig", "cfg_image_scale"),
             "cfg_rescale": ("ig", "cfg_rescale"), "temperature": ("top", "temperature"), "top_p": ("top", "top_p"),
             "top_k": ("top", "top_k")},
    "interleaved": {"image_steps": ("ig", "dllm_steps"), "text_gen_length": ("ig", "text_max_new_tokens"),
                    "max_frames": ("ig", "max_frames"), "cfg_scale": ("ig", "cfg_scale"),
                    "cfg_text_scale": ("ig", "cfg_text_scale"), "cfg_image_scale": ("ig", "cfg_image_scale"),
                    "cfg_rescale": ("ig", "cfg_rescale"), "decoder_steps": ("ig", "decoder_steps"),
                    "temperature": ("top", "temperature"), "top_p": ("top", "top_p"), "top_k": ("top", "top_k")},
    "chat": {"gen_length": ("top", "max_tokens"), "temperature": ("top", "temperature"), "top_p": ("top", "top_p"),
             "top_k": ("top", "top_k")},
}


@pytest.mark.parametrize("task,s", [(t, s) for t, s in ALL if t in SGLANG_WIRE and s.name not in ("decode", "trace", "seed")],
                         ids=[f"{t}.{s.name}" for t, s in ALL if t in SGLANG_WIRE and s.name not in ("decode", "trace", "seed")])
def test_sglang_flavor_uses_its_names_or_refuses_by_name(task, s):
    from lladauni.agent.wire import WireError, encode_options

    v = other_value(s)
    if s.name in SGLANG_WIRE[task]:
        where, name = SGLANG_WIRE[task][s.name]
        top, ig = encode_options(task, {s.name: v}, flavor="sglang")
        assert (top if where == "top" else ig) == {name: v}
    else:
        with pytest.raises(WireError, match=rf"\b{s.name}\b"):
            encode_options(task, {s.name: v}, flavor="sglang")


def test_seed_and_decoder_travel_where_sglang_reads_them():
    from lladauni.agent.wire import decode_options, encode_options

    assert encode_options("image", {"seed": 7}, flavor="sglang") == ({"seed": 7}, {"seed": 7})
    assert encode_options("chat", {"seed": 7}, flavor="sglang") == ({"seed": 7}, {})
    assert encode_options("edit", {}, decoder="turbo") == ({}, {"decode_mode": "decoder-turbo"})
    assert decode_options("image", {}, {"decode_mode": "decoder-turbo"}, loaded_decoder="turbo") == {}
    with pytest.raises(ValueError, match="loaded the 'turbo' decoder"):
        decode_options("image", {}, {"decode_mode": "normal"}, loaded_decoder="turbo")


@pytest.mark.parametrize("task", ["chat", "understand", "image", "edit", "interleaved"])
def test_every_option_has_a_cli_flag_with_its_type_and_choices(task):
    from lladauni.tools.cli import build_parser
    from lladauni.tools.cli_options import flag_of, options_from_args

    command = {"chat": ["chat", "p"], "understand": ["understand", "--image", "x.png"], "image": ["generate", "p", "--out", "o"],
               "edit": ["edit", "i", "--image", "x.png", "--out", "o"]}.get(task)
    if command is None:
        pytest.skip("interleaved has no CLI command of its own (the agent and run commands carry it)")
    argv, want = list(command), {}
    for s in option_specs(TASK_OPTIONS[task]):
        if s.name == "trace":
            continue
        v = other_value(s)
        if s.type is bool:
            argv.append(flag_of(s.name) if v else "--no-" + s.name.replace("_", "-"))
        else:
            argv += [flag_of(s.name), str(v)]
        want[s.name] = v
    args = build_parser().parse_args(argv)
    assert options_from_args(args, task) == want
    with pytest.raises(SystemExit):
        build_parser().parse_args(list(command) + ["--cache", "sometimes"])


def test_workflow_option_blocks_match_the_declarations():
    from lladauni.agent.workflows.schema import BackendSpec

    blocks = {"text": "chat", "image": "image", "edit": "edit", "interleaved": "interleaved"}
    node_decides = {"seed", "trace", "decode", "template", "mode", "max_frames"}
    for kind, task in blocks.items():
        model = BackendSpec.model_fields[kind].annotation
        schema = model.model_json_schema()["properties"]
        for s in option_specs(TASK_OPTIONS[task]):
            if s.name in node_decides:
                assert s.name not in schema
                continue
            f = schema[s.name]
            kinds = [x for x in f["anyOf"] if x.get("type") != "null"][0]
            assert f["default"] is None and f["description"] == s.help
            assert kinds.get("minimum") == s.ge and kinds.get("maximum") == s.le and kinds.get("exclusiveMinimum") == s.gt
            assert kinds.get("enum", None) == (list(s.choices) if s.choices else None)
            assert kinds.get("type") == {bool: "boolean", int: "integer", float: "number", str: "string"}[s.type]


def test_tool_schemas_match_the_declarations():
    from lladauni.tools.runtime import Limits
    from lladauni.tools.schemas import TOOL_OPTIONS, EditImageArgs, GenerateImageArgs, UnderstandArgs

    models = {"generate_image": GenerateImageArgs, "edit_image": EditImageArgs, "understand_image": UnderstandArgs}
    for tool, (task, names) in TOOL_OPTIONS.items():
        props = models[tool].model_json_schema()["properties"]
        specs = {s.name: s for s in option_specs(TASK_OPTIONS[task])}
        for n in names:
            s, f = specs[n], props[n]
            kinds = [x for x in f["anyOf"] if x.get("type") != "null"][0] if "anyOf" in f else f
            assert f["default"] is None and f["description"] == s.help
            cap = Limits().max_steps if n.endswith("steps") else s.le
            assert kinds.get("minimum") == s.ge and kinds.get("maximum") == cap
    assert GenerateImageArgs.model_json_schema()["properties"]["size"]["default"] is None  # the model's own size


def test_options_are_frozen_and_replace_validates():
    o = ImageOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.steps = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="steps=0"):
        dataclasses.replace(o, steps=0)


def test_the_options_page_is_generated_from_the_declarations():
    from pathlib import Path

    from lladauni.model_core.options import options_markdown

    page = (Path(__file__).parents[1] / "docs" / "OPTIONS.md").read_text(encoding="utf-8")
    assert page == options_markdown(), "regenerate: python -m lladauni.model_core.options > docs/OPTIONS.md"
    for task, cls in TASK_OPTIONS.items():
        assert all(f"| `{s.name}` |" in page for s in option_specs(cls))


def test_the_option_presets_are_valid_options():
    """TINY_OPTIONS (tests) and SHAPES_OPTIONS (the embedded model's lladauni.json) hold only
    declared options with valid values, per agent call kind."""
    from lladauni.agent.context import SHAPES_OPTIONS, TINY_OPTIONS

    kinds = {"text": ChatOptions, "image": ImageOptions, "edit": EditOptions, "interleaved": InterleavedOptions}
    for preset in (TINY_OPTIONS, SHAPES_OPTIONS):
        assert set(preset) == set(kinds)
        for kind, given in preset.items():
            make_options(kinds[kind], given)
    assert SHAPES_OPTIONS["image"]["image_h"] == 96 and SHAPES_OPTIONS["text"]["gen_length"] == 64


@pytest.mark.parametrize("task,s", [(t, s) for t, s in ALL if s.ge is not None or s.le is not None or s.gt is not None],
                         ids=[f"{t}.{s.name}" for t, s in ALL if s.ge is not None or s.le is not None or s.gt is not None])
def test_range_edges_are_accepted(task, s):
    """The bounds themselves: ge and le are inclusive, gt is exclusive."""
    cls = TASK_OPTIONS[task]
    for edge in [s.ge, s.le]:
        if edge is not None:
            assert getattr(cls(**{s.name: s.type(edge)}), s.name) == edge
    if s.gt is not None:
        above = s.type(s.gt) + (1 if s.type is int else 1e-6)
        assert getattr(cls(**{s.name: above}), s.name) == above
    if s.ge is not None and s.type is float:
        with pytest.raises(ValueError, match=">="):
            cls(**{s.name: s.ge - 1e-9})


def test_the_server_side_reads_both_names_and_says_where_a_problem_is():
    from lladauni.agent.wire import WireError, coerce_text, decode_options, wire_names

    assert decode_options("image", {}, {"steps": 3}) == decode_options("image", {}, {"dllm_steps": 3}) == {"steps": 3}
    with pytest.raises(WireError, match="given twice"):
        decode_options("image", {}, {"steps": 3, "dllm_steps": 4})
    assert decode_options("image", {}, {"steps": 3, "dllm_steps": 3}) == {"steps": 3}
    with pytest.raises(WireError) as e:
        decode_options("image", {}, {"dllm_steps": 0})
    assert e.value.param == "image_generation.dllm_steps" and str(e.value).startswith("image_generation.dllm_steps: steps=0")
    sources: dict = {}
    assert decode_options("chat", {"max_tokens": 9, "seed": 1}, {"dllm_steps": 2}, sources=sources) == \
        {"steps": 2, "gen_length": 9, "seed": 1}
    assert sources == {"steps": "image_generation.dllm_steps", "gen_length": "max_tokens", "seed": "seed"}
    assert decode_options("image", {}, {"format": "png"}) == {}
    with pytest.raises(WireError, match="only 'png'"):
        decode_options("image", {}, {"format": "jpeg"})
    assert not {"gen_length", "seed", "temperature", "top_p", "top_k", "decode", "trace"} & set(wire_names("chat"))
    assert "thinking_gen_length" in wire_names("image") and "text_max_new_tokens" == wire_names("interleaved")["text_gen_length"]
    assert [coerce_text("image", "use_sprint", t) for t in ("true", "False", "1", "0")] == [True, False, True, False]
    assert coerce_text("edit", "dllm_steps", "8") == 8 and coerce_text("edit", "cfg_text_scale", "1.5") == 1.5
    with pytest.raises(WireError, match="expected bool"):
        coerce_text("image", "use_sprint", "maybe")


def test_a_rebuilt_embedded_model_keeps_its_options():
    """build.py writes the options the shipped lladauni.json holds, so retraining keeps them."""
    from lladauni.model_core.checkpoint import default_checkpoint
    from lladauni.model_core.pipeline import read_defaults
    from lladauni.model_core.training.build import SHAPES_TASK_OPTIONS

    assert read_defaults(default_checkpoint())["options"] == SHAPES_TASK_OPTIONS


def test_option_specs_and_takes_options_rebuilt_here():
    """The declaration readers run at import; rebuilt here so their output is checked directly."""
    from lladauni.model_core.options import options_help, takes_options

    option_specs.cache_clear()
    specs = {s.name: s for s in option_specs(ImageOptions)}
    assert len(specs) == len(dataclasses.fields(ImageOptions))
    assert (specs["image_h"].type, specs["image_h"].optional, specs["image_h"].choices) == (int, True, None)
    assert (specs["mode"].type, specs["mode"].optional, specs["mode"].choices) == (str, False, ("normal", "thinking"))
    assert (specs["steps"].type, specs["steps"].optional, specs["steps"].ge) == (int, False, 1)
    assert (specs["top_p"].type, specs["top_p"].optional, specs["top_p"].gt) == (float, True, 0)

    def method(self, image, *, options=None, **overrides):
        """Doc."""

    wrapped = takes_options(EditOptions)(method)
    params = inspect.signature(wrapped).parameters
    assert list(params)[:3] == ["self", "image", "options"] and "overrides" not in params
    assert [p for p in params][3:] == [s.name for s in option_specs(EditOptions)]
    assert params["cfg_text_scale"].default == 4.0
    doc = wrapped.__doc__.splitlines()
    assert doc[0] == "Doc." and doc[2] == "        Options (keyword arguments, or ``options=`` a ``EditOptions``):"
    lines = doc[4:]
    assert len(lines) == len(option_specs(EditOptions)) and all(ln.startswith("        ") and ln[8] != " " for ln in lines)
    assert lines[0] == "        steps = 8 (≥ 1): denoising steps per block"
    assert options_help(EditOptions).splitlines()[1] == "    block_length = 32 (≥ 1): tokens per denoising block"
    assert "(≥ 0, ≤ 1)" in options_help(EditOptions) and "('auto' | 'static' | 'exact' | 'none')" in options_help(EditOptions)
