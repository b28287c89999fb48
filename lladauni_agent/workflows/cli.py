"""``lladauni validate FILE...``, ``lladauni run FILE --set k=v --out DIR`` and ``lladauni schema``
(thin: parse, call the public API; progress to stderr, data to stdout)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Optional

__all__ = ["add_workflow_commands", "check_seed", "event_printer", "report_failure"]


def add_workflow_commands(subparsers: Any) -> None:
    """Register ``validate``, ``run`` and ``schema`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("validate", help="validate YAML workflow files (errors as file:line:column)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_validate)

    p = subparsers.add_parser("run", help="run a YAML workflow (a file or a bundled name)")
    p.add_argument("workflow", metavar="FILE")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an input (repeat)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory: images, trace.json, report.html")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="model checkpoint directory or Hugging Face repo id (in-process model; "
                     "default: the embedded default model, the tiny shapes model, at its own sizes)")
    src.add_argument("--server", help="base URL of an OpenAI-compatible server")
    p.add_argument("--api-key", default=os.environ.get("LLADAUNI_API_KEY"))
    p.add_argument("--device", default=None)
    p.add_argument("--state-db", help="SQLite file for a durable, resumable run")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (needs the same --state-db)")
    p.add_argument("--size", help="HxW image size for every image call (overrides the workflow; the embedded "
                   "default model runs at its own sizes, lladauni_agent.context.SHAPES_OPTIONS, unless given)")
    p.add_argument("--steps", type=int, help="denoising steps for every call (overrides the workflow)")
    p.add_argument("--decoder-steps", type=int)
    p.add_argument("--gen-length", type=int)
    p.add_argument("--seed", type=int, default=None, help="default: the workflow's backend.seed")
    p.add_argument("--json", action="store_true", help="JSONL events, then the result, on stdout")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("schema", help="print the workflow JSON Schema (for editors)")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=_schema)


def check_seed(seed: Optional[int], flag: str = "--seed") -> None:
    """ValueError naming ``flag`` unless ``seed`` is None or a seed the model takes (0 to 2**63-1)."""
    from lladauni.model_core.options import MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{flag} {seed}: a seed must be between 0 and {MAX_SEED} (2**63-1)")


def report_failure(status: str, error: Optional[str]) -> None:
    """One line on stderr for a run that did not finish: its status and error (or that it gave none)."""
    reason = error or "no error message (see the run's trace.json and report.html)"
    print(f"error: the run ended with status {status!r}: {reason}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    from .loader import WorkflowError, load_workflow

    bad = 0
    for f in args.files:
        try:
            wf = load_workflow(f)
        except WorkflowError as exc:
            bad += 1
            print(str(exc), file=sys.stderr)
        except (FileNotFoundError, OSError) as exc:
            bad += 1
            print(f"{f}: {exc}", file=sys.stderr)
        else:
            print(f"{f}: ok ({wf.name}, {len(wf.spec.nodes)} nodes)")
    return 1 if bad else 0


def _overrides(args: argparse.Namespace, base: Any = None) -> dict[str, dict[str, Any]]:
    """Option overrides per call kind from the flags, over ``base`` (SHAPES_OPTIONS on the default model)."""
    o: dict[str, dict[str, Any]] = {k: dict((base or {}).get(k, {})) for k in ("text", "image", "edit", "interleaved")}
    if args.size:
        try:
            h, w = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size {args.size!r}: expected HxW, e.g. 512x512") from None
        o["image"].update(image_h=h, image_w=w)
        o["interleaved"].update(image_h=h, image_w=w)
    if args.steps:
        for k in o:
            o[k]["steps"] = args.steps
        o["interleaved"]["image_steps"] = args.steps
    if args.decoder_steps:
        for k in ("image", "edit", "interleaved"):
            o[k]["decoder_steps"] = args.decoder_steps
    if args.gen_length:
        o["text"]["gen_length"] = args.gen_length
        o["interleaved"]["text_gen_length"] = args.gen_length
    return o


def event_printer(as_json: bool, to_json: Optional[Callable[[dict], str]] = None) -> Callable[[dict], None]:
    """The ``on_event`` of ``lladauni run``, ``agent`` and ``demo``: JSONL events on stdout (each
    ``{"type", "data"}`` written by ``to_json``, default ``json.dumps(..., default=str)``), or node
    completions and progress on stderr."""
    dumps = to_json or (lambda part: json.dumps(part, default=str))

    def on_event(part: dict) -> None:
        if as_json:
            print(dumps({"type": part["type"], "data": part["data"]}), flush=True)
        elif part["type"] == "updates":
            for node in part["data"]:
                print(f"[{node}] done", file=sys.stderr, flush=True)
        elif part["type"] == "custom" and part["data"].get("type") == "progress":
            d = part["data"]
            print(f"\r  {d['node']}: {d['step']}/{d['total']}", end="", file=sys.stderr, flush=True)

    return on_event


def _run(args: argparse.Namespace) -> int:
    from lladauni.model_core.tokenizer import require_utf8

    from ..backend import backend_from_args
    from .loader import WorkflowError
    from .runner import resume_workflow, run_workflow

    check_seed(args.seed)
    inputs: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        require_utf8(item, f"--set {key.strip()}")
        inputs[key.strip()] = value

    on_event = event_printer(args.json)
    default_model = not args.server and not args.checkpoint
    backend = backend_from_args(args.server, args.checkpoint, api_key=args.api_key, device=args.device,
                                hint="pass --checkpoint PATH (in-process) or --server URL")
    try:
        if args.resume:
            if not args.state_db:
                raise ValueError("--resume needs the --state-db of the first run")
            result = resume_workflow(args.out, backend, checkpoint=args.state_db, on_event=on_event)
        else:
            from ..context import SHAPES_OPTIONS

            o = _overrides(args, SHAPES_OPTIONS if default_model else None)
            result = run_workflow(args.workflow, inputs, backend, run_dir=args.out, checkpoint=args.state_db,
                                  seed="workflow" if args.seed is None else args.seed, on_event=on_event,
                                  text_options=o["text"], image_options=o["image"], edit_options=o["edit"],
                                  interleaved_options=o["interleaved"])
    except WorkflowError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    summary = {"status": result.status, "error": result.error, "outputs": result.state.get("outputs", {}),
               "report": str(result.report_path), "trace": str(result.trace_path)}
    if args.json:
        print(json.dumps({"type": "result", "data": summary}, default=str))
    else:
        print(file=sys.stderr)
        print(json.dumps(summary, indent=2, default=str))
    if result.status in ("done", "capped"):
        return 0
    report_failure(result.status, result.error)
    return 1


def _schema(args: argparse.Namespace) -> int:
    from .schema import workflow_json_schema

    text = json.dumps(workflow_json_schema(), indent=2) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
