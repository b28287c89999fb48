"""The ``lladauni`` command line: thin wrappers over the public API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _inspect(args: argparse.Namespace) -> int:
    from model_core.checkpoint import CheckpointError, inspect_checkpoint
    from model_core.config import ConfigError

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


def _demo(args: argparse.Namespace) -> int:
    print(
        "no model yet: the demo workflow runs on the embedded default model, which lands with the "
        "'tiny trained model' issue. Try `lladauni inspect-checkpoint PATH --meta` meanwhile."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lladauni", description="LLaDA2.0-Uni: run it exactly, fast, and as an agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect-checkpoint", help="check a backbone checkpoint against its config")
    p.add_argument("path", help="checkpoint directory (or a cached Hugging Face repo id)")
    p.add_argument("--meta", action="store_true", help="match names on the meta device without reading weights")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("demo", help="run the demo workflow on the embedded default model")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
