"""``lladauni agent "..."``: run an agent graph from the command line (thin: parse, call ``Agent``).

Data (the result, or JSONL events with ``--json``) goes to stdout; progress and notes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .graph import GRAPHS

__all__ = ["add_agent_command", "run_agent_command"]


def add_agent_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``agent`` sub-command on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("agent", help="run an agent graph: think, draw, inspect, refine")
    p.add_argument("prompt", nargs="?", help="the request or question (omit with --resume)")
    p.add_argument("--graph", choices=GRAPHS, default="draw_inspect_refine")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="model checkpoint directory or Hugging Face repo id (in-process model; "
                     "default: the embedded default model, the tiny shapes model, at its own sizes)")
    src.add_argument("--server", help="base URL of an OpenAI-compatible server (ours or SGLang-Omni)")
    p.add_argument("--api-key", default=os.environ.get("LLADAUNI_API_KEY"), help="bearer token for --server")
    p.add_argument("--image", "-a", action="append", default=[], help="input image (repeat for several)")
    p.add_argument("--state-db", help="SQLite file for durable, resumable runs (default: in memory)")
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    p.add_argument("--thread-id", help="name of this run (default: random)")
    p.add_argument("--resume", metavar="THREAD", help="continue this thread (needs the same --state-db)")
    p.add_argument("--review", help="reply to a human review: approve, stop, or 'edit:<new prompt>'")
    p.add_argument("--human-review", action="store_true", help="pause for approval before drawing")
    p.add_argument("--max-iterations", type=int, default=None)
    p.add_argument("--retokenize", choices=["reuse", "roundtrip"], default="roundtrip",
                   help="how inspection sees a drawn image: roundtrip (default) re-encodes the decoded pixels, "
                        "so the model looks at what the decoder drew; reuse hands it the codes it wrote")
    p.add_argument("--sketch", choices=["auto", "always", "never", "steps"], default=None,
                   help="visual_reasoning: let the model decide (auto), force or forbid a sketch, or sketch each step "
                        "of a multi-step question as an edit of the input image and ask the question of the last "
                        "sketch (steps)")
    p.add_argument("--size", default=None, help="HxW output pixels, multiples of 32 (default: the checkpoint's size)")
    p.add_argument("--steps", type=int, default=None, help="image denoising steps (default: the checkpoint's)")
    p.add_argument("--decoder-steps", type=int, default=None)
    p.add_argument("--gen-length", type=int, default=None, help="most text tokens per reply (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSONL events, then the result, on stdout")
    p.set_defaults(func=run_agent_command)
    return p


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected HxW, e.g. 512x512") from None
    return h, w


def _review(text: str) -> Any:
    if text in ("approve", "stop"):
        return text
    if text.startswith("edit:") and text[5:].strip():
        return {"action": "edit", "prompt": text[5:].strip()}
    raise ValueError(f"--review {text!r}: approve, stop, or 'edit:<new prompt>'")


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: getattr(o, "value", None) if hasattr(o, "value") else str(o)))


def _options(args: argparse.Namespace, default_model: bool) -> dict[str, dict[str, Any]]:
    """Model options per call kind: the flags given, over SHAPES_OPTIONS on the embedded default
    model (its lladauni.json) or nothing otherwise: the checkpoint's (or the server's) own defaults."""
    import copy

    from .context import SHAPES_OPTIONS

    o = copy.deepcopy(SHAPES_OPTIONS) if default_model else {"text": {}, "image": {}, "edit": {}, "interleaved": {}}
    if args.size:
        h, w = _size(args.size)
        for k in ("image", "interleaved"):
            o[k].update(image_h=h, image_w=w)
    if args.steps is not None:
        o["image"]["steps"] = o["edit"]["steps"] = o["interleaved"]["image_steps"] = args.steps
    if args.decoder_steps:
        for k in ("image", "edit", "interleaved"):
            o[k]["decoder_steps"] = args.decoder_steps
    if args.gen_length is not None:
        o["text"]["gen_length"] = o["interleaved"]["text_gen_length"] = args.gen_length
    return o


def run_agent_command(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .backend import backend_from_args
    from lladauni.model_core.tokenizer import require_utf8

    from .workflows.cli import check_seed, event_printer, report_failure

    if not args.resume and not args.prompt:
        raise ValueError("give a prompt, or --resume THREAD")
    check_seed(args.seed)
    if args.prompt:
        require_utf8(args.prompt, "the prompt")
    backend = backend_from_args(args.server, args.checkpoint, api_key=args.api_key, device=args.device,
                                hint="choose where the model runs: --checkpoint PATH (in-process) or --server URL")
    o = _options(args, default_model=not args.server and not args.checkpoint)
    agent = Agent(
        backend, runs_dir=args.runs_dir, checkpoint=args.state_db, seed=args.seed,
        text_options=o["text"], image_options=o["image"], edit_options=o["edit"], interleaved_options=o["interleaved"],
    )

    on_event = event_printer(args.json, to_json=lambda part: json.dumps(_jsonable(part)))

    try:
        if args.resume:
            result = agent.resume(args.resume, _review(args.review) if args.review else None, on_event=on_event)
        else:
            opts = {"retokenize": args.retokenize, "human_review": args.human_review}
            if args.sketch is not None:
                if args.graph != "visual_reasoning":
                    raise ValueError(f"--sketch applies to the visual_reasoning graph, not {args.graph}")
                opts["sketch"] = args.sketch
            result = agent.run(args.prompt, images=args.image, graph=args.graph, thread_id=args.thread_id,
                               max_iterations=args.max_iterations, on_event=on_event, **opts)
    finally:
        agent.close()
    summary = {"thread_id": result.thread_id, "status": result.status, "answer": result.answer, "error": result.error,
               "best_image": str(result.best_image) if result.best_image else None,
               "images": [str(p) for p in result.images], "report": str(result.report_path),
               "interrupt": _jsonable(result.interrupt)}
    if args.json:
        print(json.dumps({"type": "result", "data": summary}))
    else:
        print(file=sys.stderr)
        for k in ("status", "answer", "error", "best_image", "report"):
            if summary[k]:
                print(f"{k:11} {summary[k]}")
        if result.status == "interrupted":
            print(f"waiting for review: {summary['interrupt']}\n"
                  f"continue with: lladauni agent --resume {result.thread_id} --review approve"
                  + (f" --state-db {args.state_db}" if args.state_db else ""))
    if result.status in ("done", "capped", "interrupted", "stopped"):
        return 0
    report_failure(result.status, result.error)
    return 1
