"""Hostile requests at every boundary (issue 20): local paths that fail in the OS, lone surrogates,
seeds past 2**63-1, unknown arguments and failed runs each get a clear refusal (HTTP 4xx with an
OpenAI-style body, MCP ``is_error``, a LangChain tool error, a non-zero CLI exit with the text on
stderr), never a 5xx and never a success. The fuzz tests draw request bodies from hypothesis
strategies that mix valid fields with wrong types, out-of-range numbers, unknown keys and odd
strings, against a fake backend that checks what reaches it as the model would; a few spot checks
run the tiny embedded model.

``LLADAUNI_FUZZ_TALLY=FILE``: record every fuzz case (tried / handled / lost, with the reasons)
in FILE instead of stopping at the first lost one (the figures of bench/RESULTS.md)."""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pydantic_core
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from langchain_core.messages import ToolMessage
from mcp import Client

from lladauni.agent import ScriptedBackend
from lladauni.agent.backend import BackendError
from lladauni.model_core.options import MAX_SEED, TASK_OPTIONS, make_options
from lladauni.tools import cli as tools_cli
from lladauni.tools.langchain_tools import as_langchain_tools
from lladauni.tools.mcp_server import TOOLS, build_mcp_server
from lladauni.tools.runtime import InputError, Limits, load_image_ref
from lladauni.tools.service import ToolService

from .agent_fixtures import tiny_backend  # noqa: F401 - fixture
from .tools_fixtures import data_url, png_bytes, running

FUZZ = settings(max_examples=int(os.environ.get("LLADAUNI_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TALLY_FILE = os.environ.get("LLADAUNI_FUZZ_TALLY")
TALLY: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


class Leaked(RuntimeError):
    """Something the boundary should have refused reached the model (the server answers 500)."""


class CheckingBackend(ScriptedBackend):
    """A ScriptedBackend that checks what reaches it as the real model does: every option against
    its task's declaration (a bad value is the model's ValueError; an unknown name, which no
    boundary may let through, a TypeError), and every text for being encodable (a lone surrogate
    that gets this far is ``Leaked``)."""

    def _check(self, task: str, texts: list, options: dict) -> None:
        for t in texts:
            if isinstance(t, str):
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise Leaked(f"unencodable text reached the model: {t!r}") from exc
        make_options(TASK_OPTIONS[task], {k: v for k, v in options.items() if k != "progress"})

    def chat(self, messages, *, images=(), system=None, **options):
        texts = [messages] if isinstance(messages, str) else [m.get("content") for m in messages]
        self._check("chat", texts + [system], options)
        return super().chat(messages, images=images, system=system, **options)

    def understand(self, image, question, **options):
        self._check("understand", [question], options)
        return super().understand(image, question, **options)

    def generate_image(self, prompt, **options):
        self._check("image", [prompt], options)
        return super().generate_image(prompt, **options)

    def edit_image(self, image, instruction, **options):
        self._check("edit", [instruction], options)
        return super().edit_image(image, instruction, **options)

    def generate_interleaved(self, prompt, *, images=(), **options):
        self._check("interleaved", [prompt], options)
        return super().generate_interleaved(prompt, images=images, **options)


class BrokenBackend(CheckingBackend):
    """Every text and image call fails, as a model that is down would."""

    def _enter(self, method, key, progress):
        raise BackendError(f"scripted failure: {method} cannot run (the model is down)")


def _allowed_dir(root: Path) -> Path:
    """``root/allowed`` with the OS's awkward cases: a symlink loop, a directory named like an image."""
    allowed = root / "allowed"
    allowed.mkdir(parents=True, exist_ok=True)
    (allowed / "ok.png").write_bytes(png_bytes())
    (allowed / "dir.png").mkdir(exist_ok=True)
    for a, b in (("loop1.png", "loop2.png"), ("loop2.png", "loop1.png")):
        if not (allowed / a).is_symlink():
            os.symlink(allowed / b, allowed / a)
    return allowed


def _service(root: Path, backend: Any = None) -> ToolService:
    lim = Limits(allowed_roots=(_allowed_dir(root),), max_body_bytes=256 * 1024, max_image_pixels=512 * 512,
                 max_image_side=1024, queue_size=8, timeout_s=60)
    return ToolService(backend or CheckingBackend(size=64), limits=lim, out_dir=root / "out", model_name="m")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    svc = _service(root)
    with running(svc) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, svc, root / "allowed"


@pytest.fixture(scope="module", autouse=True)
def _write_tally():
    yield
    if TALLY_FILE:
        Path(TALLY_FILE).write_text(json.dumps({k: dict(v) for k, v in TALLY.items()}, indent=2), encoding="utf-8")


def _post(client: httpx.Client, path: str, body: Any, **kw: Any) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=raw, headers={"Content-Type": "application/json"}, **kw)


def _error(r: httpx.Response, status: Any = None) -> str:
    """The message of an OpenAI-style error reply (asserting its shape and, if given, its status)."""
    assert r.status_code == status if isinstance(status, int) else 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"] == "invalid_request_error", err
    return err["message"]


def _chat(text: Any = "what?", url: Any = None, **kw: Any) -> dict:
    content: list = [{"type": "text", "text": text}]
    if url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return {"model": "m", "messages": [{"role": "user", "content": content}], **kw}


# ------------------------------------------------------------------------------- local paths
LOCAL_PATHS = [("symlink loop", "loop1.png", 400, "symbolic links"),
               ("300-char name", "x" * 300 + ".png", 400, "name too long"),
               ("a directory", "dir.png", 400, "not a file"),
               ("missing", "gone.png", 404, "does not exist"),
               ("NUL byte", "a\x00b.png", 400, "NUL")]


@pytest.mark.parametrize("name,leaf,status,words", LOCAL_PATHS, ids=[p[0] for p in LOCAL_PATHS])
def test_local_paths_that_fail_in_the_os_are_4xx_naming_the_field(server, name, leaf, status, words):
    client, svc, allowed = server
    msg = _error(_post(client, "/v1/chat/completions", _chat(url=f"{allowed}/{leaf}")), status)
    assert "messages[0].image_url" in msg and words in msg, msg
    msg = _error(_post(client, "/v1/workflows/caption-then-edit/runs",
                       {"inputs": {"image": f"{allowed}/{leaf}", "goal": "blue"}}), status)
    assert "inputs.image" in msg and words in msg, msg
    assert client.get("/health").json()["status"] == "ok"  # the same keep-alive connection still answers


@pytest.mark.parametrize("err,status", [(errno.EACCES, 403), (errno.EIO, 400), (errno.ENAMETOOLONG, 400)])
def test_every_os_error_reading_a_local_image_is_an_input_error(tmp_path, monkeypatch, err, status):
    allowed = _allowed_dir(tmp_path)

    def refuse(self: Path) -> bytes:
        raise OSError(err, os.strerror(err), str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(InputError) as info:
        load_image_ref(str(allowed / "ok.png"), Limits(allowed_roots=(allowed,)), "images[2]")
    assert info.value.status == status and "images[2]" in str(info.value) and os.strerror(err) in str(info.value)


# --------------------------------------------------------------------------------- surrogates
SURROGATE_BODIES = [
    ("chat text", "/v1/chat/completions", _chat("a \ud800 circle"), "messages[0].content[0].text"),
    ("chat string content", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a \udfff"}]},
     "messages[0].content"),
    ("system prompt", "/v1/chat/completions",
     {"messages": [{"role": "system", "content": "\ud800"}, {"role": "user", "content": "hi"}]}, "messages[0].content"),
    ("reasoner task", "/v1/chat/completions", {**_chat("a \ud800 circle"), "model": "m-reasoner"},
     "messages[0].content[0].text"),
    ("image prompt", "/v1/images/generations", {"prompt": "a \ud800 circle"}, "prompt"),
    ("a key", "/v1/images/generations", {"prompt": "a", "image_generation": {"\ud800": 1}}, "image_generation"),
    ("workflow input", "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a \ud800 circle"}},
     "inputs.prompt"),
    ("nested workflow input", "/v1/workflows/draw-inspect-refine-graph/runs",
     {"inputs": {"prompt": "x", "claims": [{"text": "\udc00"}]}}, "inputs.claims[0].text"),
]


@pytest.mark.parametrize("name,path,body,where", SURROGATE_BODIES, ids=[b[0] for b in SURROGATE_BODIES])
def test_a_lone_surrogate_is_a_400_naming_the_field(server, name, path, body, where):
    client, svc, _ = server
    msg = _error(_post(client, path, body), 400)
    assert where in msg and "surrogate" in msg, msg


def test_the_tokenizer_refuses_unencodable_text_by_name(tiny_backend):  # noqa: F811
    tok = tiny_backend.load().tokenizer
    with pytest.raises(ValueError, match=r"lone surrogate .*index 2"):
        tok.encode("a \ud800 circle")
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode_segments(["ok", "\udfff"])
    assert tok.encode("a\x00b \u202eabc")  # NUL and RTL marks are text like any other


# ------------------------------------------------------------------------------------- seeds
BIG = 2**70
SEED_BODIES = [
    ("chat", "/v1/chat/completions", _chat(seed=BIG)),
    ("reasoner", "/v1/chat/completions", {**_chat(seed=BIG), "model": "m-reasoner"}),
    ("image_generation", "/v1/images/generations", {"prompt": "a", "image_generation": {"seed": BIG}}),
    ("images top level", "/v1/images/generations", {"prompt": "a", "seed": BIG}),
    ("n images past the top", "/v1/images/generations", {"prompt": "a", "n": 3, "seed": MAX_SEED - 1}),
    ("workflow", "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a"}, "seed": BIG}),
    ("negative workflow seed", "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a"}, "seed": -1}),
]


@pytest.mark.parametrize("name,path,body", SEED_BODIES, ids=[b[0] for b in SEED_BODIES])
def test_a_seed_out_of_range_is_a_400_naming_seed(server, name, path, body):
    client, svc, _ = server
    msg = _error(_post(client, path, body), 400)
    assert "seed" in msg and (str(MAX_SEED) in msg if body.get("seed", 0) >= 0 else "equal to 0" in msg), msg
    assert "n" not in body or f"n={body['n']}" in msg, msg  # refused before the first image, not at the last


def test_an_integer_beyond_64_bits_is_a_400_naming_the_field(server):
    client, svc, _ = server  # a free-form workflow input: it used to crash the run's checkpoint writer (a 500)
    msg = _error(_post(client, "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a", "max_rounds": 10**30}}), 400)
    assert "inputs.max_rounds" in msg and "64-bit" in msg, msg


def test_a_seed_out_of_range_is_refused_by_mcp_langchain_and_the_cli(tmp_path, capsys):
    svc = _service(tmp_path)
    calls = [("generate_image", {"prompt": "x", "seed": BIG}), ("reason_visually", {"task": "x", "seed": BIG}),
             ("run_workflow", {"name": "draw-check-refine", "inputs": {"prompt": "x"}, "seed": BIG})]
    for name, args in calls:
        r = asyncio.run(_mcp_call(svc, name, args))
        assert r.is_error and "seed" in r.content[0].text and str(MAX_SEED) in r.content[0].text, (name, r.content)
        msg = _lc_call(svc, name, args)
        assert msg.status == "error" and "seed" in msg.content and str(MAX_SEED) in msg.content, (name, msg.content)
    for argv in (["run", "draw-check-refine", "--set", "prompt=x", "--out", str(tmp_path / "r"), "--server", "http://x",
                  "--seed", str(BIG)], ["demo", "--seed", str(BIG)]):
        code = tools_cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "--seed" in err and str(MAX_SEED) in err, err


# ------------------------------------------------------------------- unknown arguments, by name
UNKNOWN_BODIES = [
    ("chat top level", "/v1/chat/completions", {**_chat(), "temprature": 0.5}, "temprature", "temperature"),
    ("chat message", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "contnet": "x"}]},
     "contnet", None),
    ("chat part", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                                                     "txt": 1}]}]}, "txt", None),
    ("an OpenAI field this server cannot honour", "/v1/chat/completions", {**_chat(), "stop": ["\n"]}, "stop", None),
    ("images top level", "/v1/images/generations", {"prompt": "a", "guidance_scal": 2.0}, "guidance_scal",
     "guidance_scale"),
    ("workflow body", "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a"}, "sed": 3}, "sed", "seed"),
    ("workflow thread_id (each run gets its own)", "/v1/workflows/draw-check-refine/runs",
     {"inputs": {"prompt": "a"}, "thread_id": "mine"}, "thread_id", None),
]


@pytest.mark.parametrize("name,path,body,word,hint", UNKNOWN_BODIES, ids=[b[0] for b in UNKNOWN_BODIES])
def test_unknown_fields_are_refused_by_name(server, name, path, body, word, hint):
    client, svc, _ = server
    msg = _error(_post(client, path, body), 400)
    assert word in msg and (hint is None or f"did you mean '{hint}'" in msg), msg


def test_openai_bookkeeping_fields_and_neutral_values_are_accepted(server):
    client, svc, _ = server
    r = _post(client, "/v1/chat/completions", {**_chat(), "user": "u1", "stop": None, "logprobs": False,
                                               "presence_penalty": 0, "metadata": {"k": "v"}})
    assert r.status_code == 200, r.text
    reply = _post(client, "/v1/chat/completions", {**_chat("a fox"), "modalities": ["image"]}).json()["choices"][0]["message"]
    assert reply.get("images")  # this server's own reply fields, sent back with the conversation, change nothing
    history = [{"role": "user", "content": "a fox"}, {**reply, "refusal": None}, {"role": "user", "content": "bigger"}]
    assert _post(client, "/v1/chat/completions", {"messages": history}).status_code == 200


async def _mcp_call(svc: ToolService, name: str, args: dict):
    async with Client(build_mcp_server(svc)) as c:
        return await c.call_tool(name, args)


def _lc_call(svc: ToolService, name: str, args: dict) -> ToolMessage:
    tool = {t.name: t for t in as_langchain_tools(svc)}[name]
    return tool.invoke({"name": name, "args": args, "id": "c1", "type": "tool_call"})


def test_mcp_refuses_unknown_arguments_and_wrong_types_by_name(tmp_path):
    svc = _service(tmp_path)
    r = asyncio.run(_mcp_call(svc, "generate_image", {"prompt": "x", "promt": "y", "stepz": 2}))
    text = r.content[0].text
    assert r.is_error and "promt" in text and "stepz" in text and "did you mean 'prompt'" in text, text
    r = asyncio.run(_mcp_call(svc, "run_workflow", {"name": "draw-check-refine", "input": {"prompt": "x"}}))
    assert r.is_error and "'input'" in r.content[0].text and "did you mean 'inputs'" in r.content[0].text
    r = asyncio.run(_mcp_call(svc, "generate_image", {"prompt": "x", "steps": "many"}))
    assert r.is_error and "steps" in r.content[0].text
    r = asyncio.run(_mcp_call(svc, "run_workflow", {"name": "draw-check-refine", "inputs": {"prompt": "a \ud800"}}))
    assert r.is_error and "inputs.prompt" in r.content[0].text and "surrogate" in r.content[0].text
    assert svc.backend.calls == []  # none of it reached the model


def test_langchain_refuses_unknown_arguments_by_name_as_a_tool_error(tmp_path):
    svc = _service(tmp_path)
    msg = _lc_call(svc, "generate_image", {"prompt": "x", "promt": "y"})
    assert msg.status == "error" and "promt" in msg.content and "did you mean 'prompt'" in msg.content, msg.content
    msg = _lc_call(svc, "run_workflow", {"name": "draw-check-refine", "inputs": {"prompt": "a \ud800"}})
    assert msg.status == "error" and "inputs.prompt" in msg.content and "surrogate" in msg.content, msg.content


# --------------------------------------------------------------------------- failure is failure
def test_a_failed_workflow_run_is_not_a_2xx(tmp_path):
    svc = _service(tmp_path, CheckingBackend(size=64, fail_on={"generate_image": 1}))
    with running(svc) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = _post(client, "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a fox"}})
        msg = _error(r, 422)
        err = r.json()["error"]
        assert err["code"] == "run_failed" and err["thread_id"] and "scripted failure in generate_image" in msg, err
        # bad inputs: the other helper checks them before the run (400); a run that fails on them is a 422
        for inputs, word in (({"prompt": "a", "max_rounds": "lots"}, "max_rounds"), ({}, "prompt")):
            r = _post(client, "/v1/workflows/draw-check-refine/runs", {"inputs": inputs})
            assert r.status_code in (400, 422) and word in _error(r), r.text


def test_a_failed_agent_run_through_chat_is_not_a_2xx(tmp_path):
    svc = _service(tmp_path, BrokenBackend(size=64))
    with running(svc) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = _post(client, "/v1/chat/completions", {**_chat("draw a fox"), "model": "m-reasoner"})
        err = r.json()["error"]
        assert r.status_code == 422 and err["code"] == "run_failed" and "scripted failure" in err["message"], r.text
        r = _post(client, "/v1/chat/completions", {**_chat("draw a fox"), "model": "m-reasoner", "stream": True})
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == 422 and "scripted failure" in events[-1]["error"]["message"], r.text


def test_a_failed_run_is_an_error_in_mcp_and_langchain(tmp_path):
    svc = _service(tmp_path, CheckingBackend(size=64, fail_on={"generate_image": 1}))
    r = asyncio.run(_mcp_call(svc, "run_workflow", {"name": "draw-check-refine", "inputs": {"prompt": "fox"}}))
    assert r.is_error and "failed" in r.content[0].text and "scripted failure" in r.content[0].text, r.content
    svc = _service(tmp_path / "2", BrokenBackend(size=64))
    msg = _lc_call(svc, "run_workflow", {"name": "draw-check-refine", "inputs": {"prompt": "fox"}})
    assert msg.status == "error" and "scripted failure" in msg.content, msg.content
    with pytest.raises(Exception, match="scripted failure"):
        {t.name: t for t in as_langchain_tools(svc)}["reason_visually"].func(task="draw a fox", mode="refine")


def test_the_cli_exits_non_zero_with_the_error_on_stderr(tmp_path, capsys):
    svc = _service(tmp_path, CheckingBackend(size=64, fail_on={"generate_image": 1}))
    with running(svc) as url:
        code = tools_cli.main(["run", "draw-check-refine", "--set", "prompt=a fox", "--out", str(tmp_path / "run"),
                               "--server", url])
    out = capsys.readouterr()
    assert code == 1 and "error:" in out.err and "generate_image" in out.err, out
    code = tools_cli.main(["run", "draw-check-refine", "--set", "prompt=a \udcff", "--out", str(tmp_path / "r2"),
                           "--server", url])
    err = capsys.readouterr().err
    assert code == 2 and "--set prompt" in err and "UTF-8" in err, err
    code = tools_cli.main(["generate", "a \udcff", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "prompt" in err and "UTF-8" in err, err


def test_spot_checks_on_the_tiny_model(tiny_backend, tmp_path):  # noqa: F811
    """The same answers with the real model behind the server (its tokenizer, its option checks)."""
    from lladauni.agent.context import TINY_OPTIONS

    svc = ToolService(tiny_backend, limits=Limits(allowed_roots=(_allowed_dir(tmp_path),)), defaults=TINY_OPTIONS,
                      out_dir=tmp_path / "out", model_name="m")
    ig = {"dllm_steps": 2, "decoder_steps": 2, "image_h": 256, "image_w": 256}
    with running(svc) as url, httpx.Client(base_url=url, timeout=120) as client:
        assert "surrogate" in _error(_post(client, "/v1/chat/completions", _chat("a \ud800 circle", max_tokens=8)), 400)
        assert "seed" in _error(_post(client, "/v1/chat/completions", {**_chat(seed=BIG), "model": "m-reasoner"}), 400)
        assert "seed" in _error(_post(client, "/v1/images/generations", {"prompt": "a", "image_generation": {**ig, "seed": BIG}}), 400)
        assert "symbolic links" in _error(_post(client, "/v1/chat/completions",
                                                _chat(url=str(tmp_path / "allowed" / "loop1.png"), max_tokens=8)), 400)
        r = _post(client, "/v1/workflows/draw-check-refine/runs", {"inputs": {"prompt": "a", "max_rounds": "lots"}})
        assert r.status_code in (400, 422) and "max_rounds" in _error(r)
        r = _post(client, "/v1/chat/completions", {**_chat("hi", max_tokens=8), "image_generation": {"dllm_steps": 2}})
        assert r.status_code == 200 and _problem(r) is None, r.text


# ------------------------------------------------------------------------------------ fuzzing
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
PLAIN_TEXT = st.one_of(st.sampled_from(["a red fox", "a blue square in the center", "hi"]), st.text(max_size=24))
ODD_TEXT = st.one_of(
    PLAIN_TEXT, PLAIN_TEXT, PLAIN_TEXT,
    st.tuples(st.text(max_size=4), SURROGATE, st.text(max_size=4)).map("".join),
    st.sampled_from(["", " ", "a\x00b", "\u202eevil\u202c", "\ufeffbom", "\U0001f98a" * 40, "x" * 20_000, "{{ 7*7 }}",
                     "../../etc/passwd", "data:image/png;base64,@@", "1024x1024", "0x0", "\r\n", "null"]))
ODD_NUMBER = st.one_of(st.integers(-3, 300), st.sampled_from([0, -1, MAX_SEED, MAX_SEED + 1, BIG, -BIG, 10**30]),
                       st.floats(allow_nan=True, allow_infinity=True), st.booleans())
ODD_VALUE = st.recursive(st.one_of(st.none(), ODD_TEXT, ODD_NUMBER),
                         lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(PLAIN_TEXT, inner, max_size=3)),
                         max_leaves=6)
UNKNOWN_KEY = st.one_of(st.sampled_from(["temprature", "messagse", "promt", "sed", "foo", "\ud800", "", "__proto__",
                                         "image_generation.seed", "thread_id"]), st.text(max_size=8))
# image references; "@allowed/" becomes the test's allowed directory when the case is sent
IMAGE_REF = st.one_of(st.just(data_url(16)), st.sampled_from(["@allowed/" + p for p in ("ok.png", "loop1.png", "dir.png",
                                                                                       "gone.png", "x" * 300)]),
                      st.sampled_from(["http://169.254.169.254/", "file:///etc/passwd", "data:image/png;base64,AAAA"]),
                      ODD_TEXT)
SIZES = st.sampled_from(["64x64", "256x256", "100x100", "4096x4096", "big"])


MUTATION = st.tuples(st.integers(0, 99), st.sampled_from(["odd", "odd", "drop", "unknown"]), UNKNOWN_KEY, ODD_VALUE)


def _mutate(body: dict, mutations: list) -> dict:
    """``body`` with each mutation applied: a field's value made odd, a field dropped, or an unknown key added."""
    out = dict(body)
    for i, how, key, value in mutations:
        if how == "unknown" or not out:
            out[key] = value
        elif how == "drop":
            out.pop(sorted(out)[i % len(out)])
        else:
            out[sorted(out)[i % len(out)]] = value
    return out


def _case(required: dict, optional: dict, mutations: int = 1) -> st.SearchStrategy:
    """Valid dicts (``required`` keys, some ``optional`` ones) with up to ``mutations`` mutations."""
    return st.tuples(st.fixed_dictionaries(required, optional=optional),
                     st.lists(MUTATION, max_size=mutations)).map(lambda t: _mutate(*t))


IG = _case({}, {"dllm_steps": st.integers(1, 4), "decoder_steps": st.integers(1, 4), "seed": st.integers(0, 9),
                "mode": st.sampled_from(["normal", "thinking", "interleaved"]), "image_h": st.sampled_from([64, 256]),
                "image_w": st.sampled_from([64, 256]), "size": SIZES, "cfg_scale": st.floats(0, 5),
                "temperature": st.floats(0, 1), "max_frames": st.integers(1, 3)})
PART = st.one_of(_case({"type": st.just("text"), "text": ODD_TEXT}, {}),
                 _case({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": IMAGE_REF})}, {}),
                 _case({"type": st.just("image"), "image": IMAGE_REF}, {}))
MESSAGE = _case({"role": st.sampled_from(["user", "system", "assistant", "developer"]),
                 "content": st.one_of(ODD_TEXT, st.lists(PART, max_size=2))}, {"name": ODD_TEXT})
CHAT = _case({"model": st.sampled_from(["m", "m", "m-reasoner", "gpt-4"]),
              "messages": st.lists(MESSAGE, max_size=2).map(lambda ms: ms + [{"role": "user", "content": "hi"}])},
             {"modalities": st.lists(st.sampled_from(["text", "image"]), min_size=1, max_size=2, unique=True),
              "stream": st.booleans(), "seed": st.integers(0, 99), "temperature": st.floats(0, 1),
              "max_tokens": st.integers(1, 64), "top_k": st.integers(1, 5), "image_generation": IG,
              "images": st.lists(IMAGE_REF, max_size=2), "n": st.just(1), "user": ODD_TEXT}, mutations=2)
IMAGES = _case({"prompt": ODD_TEXT},
               {"n": st.integers(1, 4), "size": SIZES, "response_format": st.sampled_from(["b64_json", "url"]),
                "image_generation": IG, "seed": st.integers(0, 9), "num_inference_steps": st.integers(1, 4),
                "guidance_scale": st.floats(0, 5), "width": st.sampled_from([64, 256]), "height": st.sampled_from([64, 256])},
               mutations=2)
# each workflow's inputs (required, optional); "nope" is not a workflow
WORKFLOW_INPUTS = {"draw-check-refine": ({"prompt": ODD_TEXT}, {"max_rounds": st.integers(0, 2)}),
                   "caption-then-edit": ({"image": IMAGE_REF, "goal": ODD_TEXT}, {}),
                   "plan-then-draw": ({"prompt": ODD_TEXT}, {}), "nope": ({}, {"prompt": ODD_TEXT})}
INPUTS = _case({}, {"prompt": ODD_TEXT, "max_rounds": st.integers(0, 2), "image": IMAGE_REF, "goal": ODD_TEXT})
WORKFLOW = st.sampled_from(sorted(WORKFLOW_INPUTS)).flatmap(lambda name: st.tuples(st.just(name), _case(
    {"inputs": _case(*WORKFLOW_INPUTS[name])}, {"seed": st.integers(0, 9), "response_format": st.sampled_from(["b64_json", "url"])})))
RAW = st.one_of(st.binary(max_size=48), ODD_VALUE.map(lambda v: json.dumps(v).encode()),
                st.sampled_from([b"[" * 3000 + b"]" * 3000, b'{"messages": ' + b"[" * 900 + b"]" * 900 + b"}",
                                 b'{"prompt": "a", "n": 1' + b"0" * 5000 + b"}", b'{"prompt": 1e999999}', b"\xff\xfe{}",
                                 b'{"prompt": "\\ud800"}', b'{"inputs": {"prompt": "\\udfff"}}']))


def _resolve(obj: Any, allowed: Path) -> Any:
    """``obj`` with every "@allowed/..." string pointing into ``allowed``."""
    if isinstance(obj, str):
        return str(allowed) + "/" + obj[9:] if obj.startswith("@allowed/") else obj
    if isinstance(obj, list):
        return [_resolve(x, allowed) for x in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, allowed) for k, v in obj.items()}
    return obj


def _problem(r: httpx.Response) -> Any:
    """Why a reply is lost (a 5xx, a 4xx without an OpenAI-style error, a 2xx that reports a failure), or None."""
    if r.status_code >= 500:
        return f"HTTP {r.status_code}"
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            return None if isinstance(err["message"], str) and err["message"] and err["type"] else "4xx body"
        except (ValueError, KeyError, TypeError):
            return "4xx without an OpenAI-style error body"
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        return "an error event after the 200" if any("error" in e for e in events) else None
    body = r.json()
    if body.get("object") == "workflow.run" and (body.get("status") not in ("done", "capped") or body.get("error")):
        return "a 2xx reporting a failed workflow run"
    if any((c["message"].get("trace") or {}).get("status", "done") not in ("done", "capped") for c in body.get("choices", [])):
        return "a 2xx reporting a failed agent run"
    return None


def _judge(kind: str, send: Any) -> None:
    """Send one case, tally it, and (unless tallying) fail on a lost one."""
    TALLY[kind]["tried"] += 1
    try:
        r = send()
        problem, status = _problem(r), r.status_code
    except httpx.HTTPError as exc:
        problem, status, r = f"connection: {type(exc).__name__}", "none", None
    TALLY[kind][f"status {status}"] += 1
    TALLY[kind]["lost" if problem else "handled"] += 1
    if problem:
        TALLY[kind][f"lost: {problem}"] += 1
        if not TALLY_FILE:
            raise AssertionError(f"{kind}: {problem}: {r.status_code if r else ''} {r.text[:600] if r else ''}")


@FUZZ
@given(body=CHAT)
def test_fuzz_chat_completions(server, body):
    client, svc, allowed = server
    _judge("chat", lambda: _post(client, "/v1/chat/completions", _resolve(body, allowed)))


@FUZZ
@given(body=IMAGES)
def test_fuzz_images_generations(server, body):
    client, svc, allowed = server
    _judge("images", lambda: _post(client, "/v1/images/generations", _resolve(body, allowed)))


def _form_text(v: Any) -> str:
    """A form field's text (a lone surrogate cannot travel in UTF-8 multipart: replaced)."""
    text = v if isinstance(v, str) else json.dumps(v)
    return text.encode("utf-8", "replace").decode("utf-8")


FILES = st.lists(st.tuples(st.sampled_from(["image", "image", "image[]", "mask", "other"]),
                           st.sampled_from([png_bytes(16), png_bytes(16), b"GIF89a-junk", b"", png_bytes(600)])),
                 min_size=1, max_size=3)


@FUZZ
@given(fields=_case({"prompt": ODD_TEXT}, {
    "n": st.sampled_from(["1", "2", "0", "9", "x"]), "size": SIZES, "model": st.sampled_from(["m", "other"]),
    "response_format": st.sampled_from(["b64_json", "url", "gif"]), "image_generation": IG.map(json.dumps),
    "image_generation[steps]": st.sampled_from(["2", "-1", "x"]), "url": IMAGE_REF}, mutations=2), files=FILES)
def test_fuzz_images_edits_multipart(server, fields, files):
    client, svc, allowed = server
    data = {_form_text(k): _form_text(_resolve(v, allowed)) for k, v in fields.items()}
    upload = [(name, ("a.png", blob, "image/png")) for name, blob in files] or None
    _judge("edits", lambda: client.post("/v1/images/edits", data=data, files=upload))


@FUZZ
@given(case=WORKFLOW)
def test_fuzz_workflow_runs(server, case):
    client, svc, allowed = server
    name, body = case
    _judge("workflows", lambda: _post(client, f"/v1/workflows/{name}/runs", _resolve(body, allowed)))


@FUZZ
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/images/generations", "/v1/workflows/draw-check-refine/runs"]),
       raw=RAW)
def test_fuzz_raw_bodies(server, path, raw):
    client, svc, allowed = server
    _judge("raw bodies", lambda: _post(client, path, raw))


VALID_ARG = {"prompt": ODD_TEXT, "instruction": ODD_TEXT, "question": ODD_TEXT, "task": ODD_TEXT, "image": IMAGE_REF,
             "images": st.lists(IMAGE_REF, max_size=2), "name": st.sampled_from(["draw-check-refine", "caption-then-edit", "nope"]),
             "inputs": INPUTS, "seed": st.integers(0, 9), "steps": st.integers(1, 4), "decoder_steps": st.integers(1, 4),
             "size": SIZES, "mode": st.sampled_from(["sketch", "refine", "interleaved", "normal"]), "max_rounds": st.integers(1, 2)}
MCP_CALL = st.sampled_from(sorted(TOOLS)).flatmap(
    lambda tool: st.tuples(st.just(tool), _case(
        {k: VALID_ARG.get(k, ODD_VALUE) for k, f in TOOLS[tool][0].model_fields.items() if f.is_required()},
        {k: VALID_ARG.get(k, ODD_VALUE) for k, f in TOOLS[tool][0].model_fields.items() if not f.is_required()}, 2)))


@pytest.fixture(scope="module")
def mcp_service(tmp_path_factory):
    return _service(tmp_path_factory.mktemp("mcp"))


@FUZZ
@given(call=MCP_CALL)
def test_fuzz_mcp_tool_calls(mcp_service, call):
    name, args = call
    allowed = mcp_service.limits.allowed_roots[0]
    try:  # the SDK's client cannot send a lone surrogate in a key (nor can any JSON transport deliver one)
        pydantic_core.to_jsonable_python(args)
    except UnicodeEncodeError:
        assume(False)
    kind = "mcp"
    TALLY[kind]["tried"] += 1
    try:
        r = asyncio.run(_mcp_call(mcp_service, name, _resolve(args, allowed)))
        ok = bool(r.content and r.content[0].text) if r.is_error else \
            (r.structured_content or {}).get("status", "done") in ("done", "capped")
        problem = None if ok else "a success reporting a failure" if not r.is_error else "an error without text"
    except Exception as exc:  # noqa: BLE001 - a crash is a lost case
        problem = f"raised {type(exc).__name__}: {exc}"
    TALLY[kind]["lost" if problem else "handled"] += 1
    if problem:
        TALLY[kind][f"lost: {problem[:80]}"] += 1
        assert TALLY_FILE, f"mcp {name} {args!r}: {problem}"


def test_request_data_limits_at_their_exact_edges():
    """check_request_data at the boundaries: 64 levels of arrays or objects pass and 65 do not (the
    front door's streaming check agrees), the 64-bit range is closed at both ends, and the
    refusal names the place and shows the value (or its digit count when it is huge)."""
    from lladauni.tools.http_limits import ConnectionLimits, JsonDepth
    from lladauni.tools.runtime import MAX_REQUEST_DEPTH, InputError, check_request_data

    def nested(levels: int, kind: str):
        value: object = 1
        for _ in range(levels):
            value = [value] if kind == "list" else {"k": value}
        return value

    assert MAX_REQUEST_DEPTH == 64
    for kind in ("list", "dict"):
        check_request_data(nested(64, kind))
        with pytest.raises(InputError, match="nests deeper than 64 levels") as info:
            check_request_data(nested(65, kind), "body")
        assert info.value.status == 400
        where = "body" + ("[0]" * 64 if kind == "list" else ".k" * 64)
        assert str(info.value).startswith(where + ": ")
        depth = JsonDepth(ConnectionLimits().max_json_depth)
        depth.feed(json.dumps(nested(64, kind)).encode(), last=True)  # the front door allows the same 64
    check_request_data(nested(3, "list"), max_depth=3)
    with pytest.raises(InputError):
        check_request_data(nested(4, "list"), max_depth=3)

    for ok in (2**63 - 1, -2**63, 0):
        check_request_data({"seed": ok})
    for bad, shown in ((2**63, str(2**63)), (-2**63 - 1, str(-2**63 - 1)), (10**29 * 9, str(10**29 * 9)),
                       (10**30, "an integer of 31 digits"), (-10**40, "an integer of 41 digits")):
        with pytest.raises(InputError) as info:
            check_request_data({"image_generation": {"seed": bad}})
        assert str(info.value).startswith(f"image_generation.seed: {shown} is beyond the 64-bit integers")
    with pytest.raises(InputError, match=r"^messages\[1\]: the text holds a lone surrogate"):
        check_request_data({"messages": ["fine", "a \ud800 b"]})
    with pytest.raises(InputError, match=r"^image_generation: the key '\\ud800x' holds a lone surrogate"):
        check_request_data({"image_generation": {"\ud800x": 1}})
