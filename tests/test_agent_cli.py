"""``lladauni agent`` through ``add_agent_command`` on a parser of our own (tools/cli.py wires it)."""

from __future__ import annotations

import argparse
import json

import pytest

from lladauni.agent.cli import add_agent_command


def _parse(argv):
    parser = argparse.ArgumentParser(prog="lladauni")
    add_agent_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_runs_a_graph_on_the_tiny_checkpoint(tiny_ckpt, tmp_path, capsys):
    args = _parse(["agent", "a red cat", "--graph", "plan_then_draw", "--checkpoint", str(tiny_ckpt),
                   "--device", "cpu", "--size", "256x256", "--steps", "2", "--decoder-steps", "2",
                   "--gen-length", "32", "--runs-dir", str(tmp_path), "--thread-id", "cli1", "--json"])
    assert args.func(args) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    result = lines[-1]["data"]
    assert lines[-1]["type"] == "result" and result["status"] == "done" and result["thread_id"] == "cli1"
    assert {l["type"] for l in lines[:-1]} == {"updates", "custom"}
    assert (tmp_path / "cli1" / "report.html").is_file()


def test_cli_review_round_trip_with_a_state_db(tmp_path, capsys, monkeypatch):
    import lladauni.agent.backend as backend_mod
    from lladauni.agent import ScriptedBackend

    monkeypatch.setattr(backend_mod, "HTTPBackend", lambda url, api_key=None: ScriptedBackend())
    common = ["--server", "http://127.0.0.1:1", "--runs-dir", str(tmp_path), "--state-db", str(tmp_path / "s.sqlite")]
    args = _parse(["agent", "a cat", "--human-review", "--thread-id", "r1", "--graph", "plan_then_draw"] + common)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "--resume r1 --review approve" in out
    args = _parse(["agent", "--resume", "r1", "--review", "edit:a dog"] + common)
    assert args.func(args) == 0 and "status      done" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--review 'perhaps'"):
        a = _parse(["agent", "--resume", "r1", "--review", "perhaps"] + common)
        a.func(a)
    import lladauni.model_core.checkpoint as ckpt_mod

    monkeypatch.setattr(ckpt_mod, "DEFAULT_CHECKPOINT_DIR", tmp_path / "no-default-model")
    with pytest.raises(ValueError, match="--checkpoint PATH"):
        a = _parse(["agent", "x"])
        a.func(a)
