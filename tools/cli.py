"""The ``lladauni`` command line: thin wrappers over the public API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from lladauni.model_core.extras import missing_extra_message

from .cli_options import add_option_flags, options_from_args


def _inspect(args: argparse.Namespace) -> int:
    from lladauni.model_core.checkpoint import CheckpointError, inspect_checkpoint
    from lladauni.model_core.config import ConfigError

    try:
        report = inspect_checkpoint(args.path, meta=args.meta)
    except (CheckpointError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint   {report['path']}  ({report['mode']})")
        print(f"model        {report['layers']} layers, {report['experts']} experts, vocab {report['vocab_size']:,}")
        print(f"parameters   {report['parameters']:,} total, {report['active_parameters']:,} active per token")
        print(f"tensors      {report['tensors_in_index']:,} in the index across {report['shards']} shard(s)")
        print(f"matched      {report['matched']:,}")
        print(f"missing      {len(report['missing']):,}" + (f"  e.g. {report['missing'][:5]}" if report["missing"] else ""))
        print(f"unexpected   {len(report['unexpected']):,}" + (f"  e.g. {report['unexpected'][:5]}" if report["unexpected"] else ""))
        if "loaded_dtype" in report:
            print(f"loaded       all weights read and shape-checked ({report['loaded_dtype']})")
        print("OK" if report["ok"] else "MISMATCH")
    return 0 if report["ok"] else 1


def _progress_bar(desc: str):
    """A tqdm bar driven by the pipeline's progress(done, total) callback."""
    from tqdm import tqdm

    state: dict = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="block", leave=False)
        bar.update(done - bar.n)

    def close() -> None:
        if state.get("bar") is not None:
            state["bar"].close()

    return update, close


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _backend(args: argparse.Namespace, decode: bool = False):
    """The model behind one ``LocalBackend``, the road every surface (CLI, server, MCP, agents)
    takes to it; without --checkpoint, the embedded default model (its own defaults apply)."""
    from lladauni.agent.backend import LocalBackend, require_default_model

    if args.checkpoint is None:
        require_default_model("pass --checkpoint PATH")
    return LocalBackend(args.checkpoint, device=args.device, dtype=_DTYPES[args.dtype], decoder_variant=args.decoder,
                        decode=decode, experts=getattr(args, "experts", "auto"),
                        expert_offload=getattr(args, "expert_offload", False))


def _run_task(args: argparse.Namespace, task: str, method: str, *inputs, **extra):
    """One task call through the backend with the flags the user set and a progress bar; returns
    (result, the model's name)."""
    opts = options_from_args(args, task)
    backend = _backend(args, decode=opts.get("decode", True) if task in ("image", "edit") else False)
    update, close = _progress_bar(task)
    try:
        result = getattr(backend, method)(*inputs, progress=update, **extra, **opts)
    finally:
        close()
    return result, backend.describe()["name"]


def _report(args: argparse.Namespace, payload: dict, text: Optional[str] = None) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
    elif text is not None:
        print(text)


def _stats(stats) -> dict:
    return {"forwards": stats.forwards, "forward_tokens": stats.forward_tokens, "seconds": round(stats.seconds, 3),
            "generated_tokens": stats.generated_tokens}


def _chat(args: argparse.Namespace) -> int:
    r, name = _run_task(args, "chat", "chat", args.prompt)
    _report(args, {"model": name, "text": r.text, "token_ids": r.token_ids, "stats": _stats(r.stats)}, r.text)
    return 0


def _understand(args: argparse.Namespace) -> int:
    r, name = _run_task(args, "understand", "understand", Path(args.image), args.question)
    _report(args, {"model": name, "text": r.text, "token_ids": r.token_ids, "stats": _stats(r.stats)}, r.text)
    return 0


def _save_image_result(args: argparse.Namespace, r, extra: dict) -> dict:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"h": r.h, "w": r.w, "codes": r.codes.tolist(), "thinking": r.thinking, "stats": _stats(r.stats), **extra}
    if r.image is not None:
        _write_atomic(out, lambda p: r.image.save(p, format="PNG"))
        meta["image"] = str(out)
    sidecar = out.with_suffix(".json")
    _write_atomic(sidecar, lambda p: p.write_text(json.dumps(meta)))
    return {**meta, "json": str(sidecar)}


def _generate(args: argparse.Namespace) -> int:
    r, name = _run_task(args, "image", "generate_image", args.prompt)
    meta = _save_image_result(args, r, {"prompt": args.prompt, "model": name})
    _report(args, {k: v for k, v in meta.items() if k != "codes"}, f"wrote {meta.get('image', meta['json'])}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    r, name = _run_task(args, "edit", "edit_image", [Path(p) for p in args.image], args.instruction)
    meta = _save_image_result(args, r, {"instruction": args.instruction, "model": name})
    _report(args, {k: v for k, v in meta.items() if k != "codes"}, f"wrote {meta.get('image', meta['json'])}")
    return 0


DEMO_PROMPT = "a red circle at the top left and a blue square in the center"
DEMO_WORKFLOW = "draw-check-refine"
_DEMO_STEPS = ("draw", "check", "fix", "recheck")


def _demo_backend(args: argparse.Namespace):
    """The backend the demo runs on: the embedded default model in this process."""
    from lladauni.agent.backend import LocalBackend

    return LocalBackend(None, device=args.device)


def _demo_dir(out: Path) -> Path:
    """``out``, emptied of a previous demo run (only the files a workflow run writes); another run there is refused."""
    import shutil

    meta_path = out / "run.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("kind") != "workflow" or meta.get("name") != DEMO_WORKFLOW:
            raise ValueError(f"{out} holds another run (not a demo run); choose another --out")
        for name in ("run.json", "trace.json", "report.html"):
            (out / name).unlink(missing_ok=True)
        for name in ("images", "codes"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    return out


def _demo_summary(result, prompt: str, load_s: float, run_s: float) -> list[str]:
    """The lines ``lladauni demo`` prints: each step with its text and verdict, the outcome, the report, the time."""
    from lladauni.agent.artifacts import ArtifactStore

    lines = [f"prompt   {prompt}"]
    steps = [ev for ev in result.state.get("timeline", []) if ev.get("node") in _DEMO_STEPS]
    for i, ev in enumerate(steps, 1):
        node, text = ev["node"], " ".join(str(ev.get("text") or "").split())
        secs = f"  ({ev['seconds']:.1f} s)" if ev.get("seconds") else ""
        if ev.get("kind") == "verdict":
            verdict = (ev.get("data") or {}).get("verdict")
            word = {True: "pass", False: "fail"}.get(verdict, "unclear")
            lines.append(f"{i}. {node:8} {word:7} {text!r}{secs}")
        else:
            img = ev.get("image") or {}
            size = f"{img.get('width', '?')}x{img.get('height', '?')}"
            what = "drew" if node == "draw" else "edited"
            lines.append(f"{i}. {node:8} {what:7} a {size} image for {text!r}{secs}")
    outputs = result.state.get("outputs") or {}
    passed = outputs.get("passed")
    rounds = sum(1 for ev in steps if ev["node"] == "fix")
    verdict = {True: "passed", False: "not passed", None: "unclear"}.get(passed, str(passed))
    lines.append(f"result   {verdict} by the model's own check after {rounds} fix round{'s' if rounds != 1 else ''} "
                 f"(status {result.status})")
    if result.error:
        lines.append(f"error    {result.error}")
    ref = outputs.get("image")
    if isinstance(ref, dict) and ref.get("png"):
        store = ArtifactStore(result.run_dir)
        lines.append(f"image    {store.path(ref['png'])}")
        from lladauni.agent.backend import shapes_pixel_check

        # any phrasing the shapes grammar reads (phrasing.parse_request), as the report's checker line
        check = shapes_pixel_check(prompt, store.load_image(ref))
        if check is None:
            lines.append("checker  (the prompt is not a shapes-world drawing request, so the pixel checker cannot judge it)")
        elif check["passed"]:
            lines.append("checker  the pixel checker agrees: the image shows the request")
        else:
            lines.append("checker  the pixel checker finds that the image does not show the request "
                         f"({'; '.join(check['problems'])})")
    lines.append(f"report   {result.report_path}")
    lines.append(f"wall     {load_s + run_s:.1f} s (model load {load_s:.1f} s, workflow {run_s:.1f} s)")
    return lines


def _demo(args: argparse.Namespace) -> int:
    import time

    import lladauni.model_core.checkpoint as mc
    from lladauni.agent.workflows import run_workflow
    from lladauni.agent.workflows.cli import check_seed, event_printer, report_failure

    check_seed(args.seed)
    try:
        mc.default_checkpoint()
    except mc.CheckpointError:
        print(f"error: lladauni demo needs the embedded default model, which is not installed here "
              f"({mc.DEFAULT_CHECKPOINT_DIR} has no config.json); build it with `python -m lladauni.model_core.training.build`",
              file=sys.stderr)
        return 2
    out = _demo_dir(Path(args.out))
    backend = _demo_backend(args)
    t0 = time.perf_counter()
    if hasattr(backend, "load"):
        print("loading the embedded default model ...", file=sys.stderr, flush=True)
        backend.load()
    t1 = time.perf_counter()
    result = run_workflow(DEMO_WORKFLOW, {"prompt": args.prompt, "max_rounds": args.max_rounds}, backend, run_dir=out,
                          seed="workflow" if args.seed is None else args.seed, on_event=event_printer(False))
    t2 = time.perf_counter()
    print(file=sys.stderr)
    print("\n".join(_demo_summary(result, args.prompt, t1 - t0, t2 - t1)))
    if result.status in ("done", "capped"):
        return 0
    report_failure(result.status, result.error)
    return 1


def _tool_service(args: argparse.Namespace):
    """The ``ToolService`` that ``serve`` and ``mcp`` share: one model, limits, defaults; the
    model's name and image sizes are the loaded checkpoint's (--model-name renames it)."""
    from lladauni.agent.context import SHAPES_OPTIONS, TINY_OPTIONS
    from lladauni.tools.runtime import Limits
    from lladauni.tools.service import ToolService

    backend = _backend(args, decode=True)
    backend.load()
    limits = Limits(allowed_roots=tuple(Path(p).resolve() for p in args.allow_path), queue_size=args.queue_size,
                    timeout_s=args.timeout, max_body_bytes=args.max_body_mb * 1024 * 1024,
                    max_image_side=args.max_image_side)
    svc = ToolService(backend, limits=limits, defaults={"tiny": TINY_OPTIONS, "shapes": SHAPES_OPTIONS}.get(args.preset),
                      out_dir=args.out_dir, model_name=args.model_name)
    for name, path in dict(w.split("=", 1) for w in args.workflow).items():
        svc.register_workflow(name, path)
    return svc


def _api_key(args: argparse.Namespace) -> Optional[str]:
    return args.api_key or os.environ.get("LLADAUNI_API_KEY") or None


def _serve(args: argparse.Namespace) -> int:
    from lladauni.tools.server import is_loopback, serve  # without the server extra, main() names it

    if not is_loopback(args.host) and not _api_key(args):  # refuse before loading the model
        raise ValueError(f"--host {args.host} is reachable from other machines: set --api-key or LLADAUNI_API_KEY")
    serve(_tool_service(args), host=args.host, port=args.port, api_key=_api_key(args), limits=_connection_limits(args))
    return 0


def _connection_limits(args: argparse.Namespace):
    """The front door's limits from the flags (``http_limits.ConnectionLimits``; 0 = no per-client cap,
    for a server behind a reverse proxy, where every client has the proxy's address)."""
    from lladauni.tools.http_limits import ConnectionLimits

    given = {k: v for k, v in (("header_timeout_s", args.header_timeout), ("body_timeout_s", args.body_timeout))
             if v is not None}
    if args.max_connections_per_client is not None:  # unset flags keep ConnectionLimits' own defaults
        given["max_connections_per_client"] = args.max_connections_per_client or None
    return ConnectionLimits(**given)


def _mcp(args: argparse.Namespace) -> int:
    from lladauni.tools.mcp_server import run_mcp  # without the server extra, main() names it
    from lladauni.tools.server import is_loopback

    if args.transport == "http" and not is_loopback(args.host) and not _api_key(args):
        raise ValueError(f"--host {args.host} is reachable from other machines: set --api-key or LLADAUNI_API_KEY")
    run_mcp(_tool_service(args), transport="stdio" if args.transport == "stdio" else "streamable-http",
            host=args.host, port=args.port, api_key=_api_key(args), limits=_connection_limits(args))
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect-checkpoint", help="check a backbone checkpoint against its config")
    p.add_argument("path", help="checkpoint directory (or a cached Hugging Face repo id)")
    p.add_argument("--meta", action="store_true", help="match names on the meta device without reading weights")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_inspect)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the draw-check-refine workflow on the embedded default model",
                       description="Draw a scene of the shapes world with the embedded default model, ask the model "
                                   "whether the drawing matches, and fix it until it does; writes an HTML report.")
    p.add_argument("--prompt", default=DEMO_PROMPT, help=f"what to draw (default: {DEMO_PROMPT!r})")
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="run directory: images, trace.json, report.html (default: demo-out; a previous demo run there is replaced)")
    p.add_argument("--seed", type=int, default=None, help="default: the workflow's backend.seed")
    p.add_argument("--max-rounds", type=int, default=2, help="most fix rounds after the first check")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=_demo)


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory or Hugging Face repo id (default: the embedded default model, "
                        "the tiny shapes model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=list(_DTYPES), default="auto")
    p.add_argument("--decoder", choices=["turbo", "normal"], default="turbo", help="which image decoder to load")
    p.add_argument("--experts", choices=["auto", "fp8", "dtype"], default="auto",
                   help="routed-expert storage: fp8 (block-scaled e4m3, about half the backbone's memory), "
                        "dtype (--dtype), auto (as the checkpoint stores them)")
    p.add_argument("--expert-offload", action="store_true",
                   help="keep routed experts in host memory and stream them per layer (for small GPUs; slower)")


def _add_tasks(sub) -> None:
    """chat / understand / generate / edit: the task's inputs, then one flag per task option."""
    commands = (("chat", "chat", "text chat", _chat), ("understand", "understand", "answer a question about an image", _understand),
                ("generate", "image", "text to image", _generate), ("edit", "edit", "edit an image with an instruction", _edit))
    for name, task, help_, func in commands:
        p = sub.add_parser(name, help=help_)
        _model_flags(p)
        p.add_argument("--json", action="store_true", help="print a JSON result")
        if name in ("chat", "generate"):
            p.add_argument("prompt")
        if name == "understand":
            p.add_argument("--image", required=True)
            p.add_argument("--question", default="")
        if name == "edit":
            p.add_argument("instruction")
            p.add_argument("--image", required=True, action="append", help="source image (repeat for several references)")
        if name in ("generate", "edit"):
            p.add_argument("--out", required=True, help="PNG path; codes and stats go to the .json beside it")
        add_option_flags(p, task)
        p.set_defaults(func=func)


def _add_servers(sub) -> None:
    for name, port, help_, func in (("serve", 8000, "OpenAI-compatible HTTP server (needs the server extra)", _serve),
                                    ("mcp", 8001, "MCP server over stdio or streamable HTTP (needs the server extra)", _mcp)):
        p = sub.add_parser(name, help=help_)
        _model_flags(p)
        p.add_argument("--host", default="127.0.0.1", help="beyond loopback only with --api-key")
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--api-key", default=None, help="bearer token (default: $LLADAUNI_API_KEY)")
        p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                       help="local image paths are accepted under DIR (repeat; none by default)")
        p.add_argument("--workflow", action="append", default=[], metavar="NAME=PATH", help="register a workflow file")
        p.add_argument("--out-dir", default="lladauni-out", help="generated files and agent/workflow runs")
        p.add_argument("--queue-size", type=int, default=4, help="requests waiting behind the running one (then 429)")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queue wait included")
        p.add_argument("--max-body-mb", type=int, default=32)
        p.add_argument("--header-timeout", type=float, default=None,
                       help="seconds a connection may take to send a request head, then closed (default 10)")
        p.add_argument("--body-timeout", type=float, default=None,
                       help="longest pause while a request body arrives, then 408 (default 30)")
        p.add_argument("--max-connections-per-client", type=int, default=None,
                       help="open connections per client address (default 128; 0: no cap, e.g. behind a reverse proxy)")
        p.add_argument("--max-image-side", type=int, default=2048,
                       help="largest output side a request may ask for (at most what the checkpoint's size tokens allow)")
        p.add_argument("--model-name", default=None, help="the model id clients send (default: the checkpoint's name)")
        p.add_argument("--preset", choices=["default", "tiny", "shapes"], default="default",
                       help="request defaults: default = the checkpoint's own (lladauni.json); tiny = CPU-test sizes "
                            "(tiny random checkpoints); shapes = the embedded default model's")
        if name == "mcp":
            p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
        p.set_defaults(func=func)


def _add_agent_commands(sub) -> None:
    try:  # the agent and workflow commands need the `agent` extra (langgraph); the rest works without it
        from lladauni.agent.cli import add_agent_command
        from lladauni.agent.workflows.cli import add_workflow_commands
    except ModuleNotFoundError as exc:
        if missing_extra_message(exc) is None:
            raise
        for name in ("agent", "validate", "run", "schema"):  # still listed, and each says what to install
            p = sub.add_parser(name, help=f"(needs the agent extra) {name}", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda args, missing=exc: _fail(missing_extra_message(missing, f"lladauni {args.command}")))
    else:
        add_agent_command(sub)
        add_workflow_commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lladauni", description="LLaDA2.0-Uni: run it exactly, fast, and as an agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_inspect, _add_demo, _add_tasks, _add_servers, _add_agent_commands):
        add(sub)
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check_texts(args: argparse.Namespace) -> None:
    """The texts given to the model (prompt, instruction, question) must be UTF-8: bytes that are
    not arrive as lone surrogates, which no tokenizer takes (refused before the model loads)."""
    from lladauni.model_core.tokenizer import require_utf8

    for name in ("prompt", "instruction", "question"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            require_utf8(value, name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lladauni.model_core.generation.results import GenerationError

    args = build_parser().parse_args(argv)
    try:
        _check_texts(args)
        return int(args.func(args))
    except (ValueError, OSError) as exc:  # bad input (a missing or unreadable file too): say what, no traceback
        return _fail(str(exc))
    except GenerationError as exc:  # the model ran and could not give what was asked
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a missing extra: one line naming it
        hint = missing_extra_message(exc, f"lladauni {args.command}")
        if hint is None:
            raise
        return _fail(hint)


if __name__ == "__main__":
    raise SystemExit(main())
