from __future__ import annotations

import json
import subprocess
import sys

from lladauni.tools.cli import main


def test_inspect_published_index_on_meta(published_meta, capsys):
    assert main(["inspect-checkpoint", str(published_meta), "--meta"]) == 0
    out = capsys.readouterr().out
    assert "matched      14,813" in out and "missing      0" in out and out.strip().endswith("OK")


def test_inspect_json_and_mismatch(published_meta, tmp_path, capsys):
    assert main(["inspect-checkpoint", str(published_meta), "--meta", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matched"] == 14_813 and report["ok"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((published_meta / "config.json").read_text())
    idx = json.loads((published_meta / "model.safetensors.index.json").read_text())
    del idx["weight_map"]["lm_head.weight"]
    idx["weight_map"]["model.layers.20.attention.dense.weight"] = "model-00013-of-00013.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(idx))
    assert main(["inspect-checkpoint", str(bad), "--meta", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == ["lm_head.weight"] and report["unexpected"] == ["model.layers.20.attention.dense.weight"]


def test_inspect_loads_real_weights(tiny_ckpt, capsys):
    assert main(["inspect-checkpoint", str(tiny_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "all weights read and shape-checked" in out and out.strip().endswith("OK")


def test_inspect_errors_are_reported(tmp_path, capsys):
    assert main(["inspect-checkpoint", str(tmp_path / "absent")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "lladauni.tools.cli", "--help"], capture_output=True, text=True, check=True)
    assert "inspect-checkpoint" in r.stdout


def test_chat_and_generate_commands(tiny_ckpt, tmp_path, capsys):
    assert main(["chat", "--checkpoint", str(tiny_ckpt), "hello", "--gen-length", "32", "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["generated_tokens"] == len(out["token_ids"]) > 0
    target = tmp_path / "img" / "cat.png"
    assert main(["generate", "--checkpoint", str(tiny_ckpt), "a cat", "--height", "256", "--width", "256",
                 "--steps", "2", "--no-decode", "--out", str(target), "--seed", "1"]) == 0
    meta = json.loads(target.with_suffix(".json").read_text())
    assert (meta["h"], meta["w"]) == (8, 8) and len(meta["codes"]) == 64 and not target.exists()
    assert not list(target.parent.glob("*.tmp"))


def test_generate_rejects_bad_size(tiny_ckpt, tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tiny_ckpt), "a cat", "--height", "250", "--no-decode",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
