"""``lladauni demo``: a clear error without the embedded default model; the draw-check-refine summary
and report on a fake shapes backend; and, once the trained model ships, the real demo."""

from __future__ import annotations

import pytest

import lladauni.model_core.checkpoint as mc
import lladauni.tools.cli as cli
from lladauni.tools.cli import main

from .shapes_fakes import ShapesOracle


def _have_default_model() -> bool:
    try:
        mc.default_checkpoint()
    except mc.CheckpointError:
        return False
    return True


def test_demo_without_the_default_model_exits_2(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no-model"
    empty.mkdir()
    monkeypatch.setattr(mc, "DEFAULT_CHECKPOINT_DIR", empty)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "embedded default model" in err
    assert str(empty) in err and not (tmp_path / "out").exists()


@pytest.fixture
def fake_default_model(tmp_path, monkeypatch):
    """A default-checkpoint directory that passes the existence check, and the demo on a fake backend."""
    d = tmp_path / "shapes-tiny"
    d.mkdir()
    (d / "config.json").write_text("{}")
    monkeypatch.setattr(mc, "DEFAULT_CHECKPOINT_DIR", d)
    monkeypatch.setattr(cli, "_demo_backend", lambda args: ShapesOracle(mode="bad_first_draw"))


def test_demo_prints_each_step_and_writes_the_report(tmp_path, fake_default_model, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"prompt   {cli.DEMO_PROMPT}"
    steps = [ln.split()[1] for ln in lines if ln[:1].isdigit()]
    assert steps == ["draw", "check", "fix", "recheck"]
    check = next(ln for ln in lines if ln.startswith("2. check"))
    assert " fail " in check and "missing" in check
    assert next(ln for ln in lines if ln.startswith("4. recheck")).split()[2] == "pass"
    assert "result   passed by the model's own check after 1 fix round" in text
    assert "the pixel checker agrees" in text
    assert f"report   {out / 'report.html'}" in text and "wall     " in text
    assert (out / "report.html").is_file() and "draw-check-refine" in (out / "report.html").read_text()
    # running again replaces the previous demo run
    assert main(["demo", "--out", str(out), "--prompt", "a green triangle on the right"]) == 0
    assert "prompt   a green triangle on the right" in capsys.readouterr().out


def test_demo_refuses_a_directory_with_another_run(tmp_path, fake_default_model, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "run.json").write_text('{"kind": "agent", "name": "x"}')
    assert main(["demo", "--out", str(out)]) == 2
    assert "holds another run" in capsys.readouterr().err


@pytest.mark.skipif(not _have_default_model(), reason="the embedded default model is not installed")
def test_demo_on_the_embedded_default_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (out / "report.html").is_file() and "report   " in text and "1. draw" in text
