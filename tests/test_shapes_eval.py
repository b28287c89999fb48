"""bench/shapes_eval.py: the scoring rules, and every metric on fake backends (perfect: 100%, wrong: 0%,
a bad first draw that the loop's check and fix repair: a positive gain)."""

from __future__ import annotations

import json

import pytest

from bench import shapes_eval as se
from lladauni.model_core.training import shapes

from .shapes_fakes import IMAGE_FORWARDS, TEXT_FORWARDS, ShapesOracle

N, SEED = 4, 1000


def _examples():
    return shapes.ShapesWorld(SEED, split="heldout").examples(N)


@pytest.mark.parametrize("answer, expected, ok", [
    ("yes", "yes", True), ("Yes, there is a red circle.", "yes", True), ("yesterday", "yes", False),
    ("No.", "no", True), ("not sure", "no", False), ("Top-left.", "top left", True), ("top left", "top", False),
    ("  the top  ", "top", False), ("centre", "center", True), ("2", "2", True), ("12", "1", False),
    ("2 shapes", "2", True), ("<|mask|> red", "red", True), ("reddish", "red", False), ("", "red", False),
])
def test_answer_rule(answer, expected, ok):
    assert se.answer_correct(answer, expected) is ok


def test_caption_rule():
    scene = shapes.parse_caption("a red circle at the top left and a blue square in the center")
    assert se.caption_correct("A red circle at the top left and a blue square in the center.", scene)
    assert not se.caption_correct("a red circle at the top left", scene)
    assert not se.caption_correct("a red circle at the top left, a blue square in the center and a green diamond "
                                  "on the left", scene)
    assert not se.caption_correct("nothing", scene)


def _all_accuracies(r: dict) -> list[float]:
    u, e, lp = r["understanding"], r["edits"], r["loop"]
    h, he = u["heldout_phrasing"], e["heldout_phrasing"]
    return ([t["accuracy"] for t in u["questions"].values()] + [u["caption"]["accuracy"]]
            + [t["accuracy"] for t in h["questions"].values()] + [h["caption"]["accuracy"]]
            + [r["t2i"]["overall"]["accuracy"], r["t2i_thinking"]["overall"]["accuracy"]]
            + [t["accuracy"] for t in r["t2i"]["phrasings"].values()]
            + [t["accuracy"] for t in r["colors"]["colors"].values()] + [r["colors"]["overall"]["accuracy"]]
            + [t["accuracy"] for t in e["kinds"].values() if t["total"]] + [e["overall"]["accuracy"]]
            + [t["accuracy"] for t in he["kinds"].values() if t["total"]]
            + [lp[k]["accuracy"] for k in ("single", "loop", "equal_calls_last", "best_of_self_check")]
            + [r["reasoning"][k]["accuracy"] for k in ("direct", "sketched")])


def test_perfect_backend_scores_100_percent_everywhere():
    b = ShapesOracle(_examples(), "perfect", SEED, N)
    r = se.evaluate(b, n=N, seed=SEED)
    assert set(_all_accuracies(r)) == {1.0}
    assert r["understanding"]["questions"]["overall"]["total"] == sum(len(ex.questions) for ex in _examples())
    assert r["edits"]["overall"]["total"] == sum(len(ex.edits) for ex in _examples())
    lp = r["loop"]
    # the first check passes: draw + check; k = 2 blind draws; best of 1 draw + its check
    assert lp["loop"]["mean_calls"] == 2 and lp["k"] == 2 and lp["m"] == 1
    assert lp["loop"]["mean_forwards"] == IMAGE_FORWARDS + TEXT_FORWARDS
    assert lp["single"]["mean_calls"] == 1 and lp["single"]["mean_forwards"] == IMAGE_FORWARDS
    assert lp["equal_calls_last"]["mean_calls"] == 2 and lp["best_of_self_check"]["mean_calls"] == 2
    assert lp["gain_points"] == 0 and lp["loop"]["self_verdict_agrees"]["accuracy"] == 1.0
    assert not any(t["errors"] for t in r["understanding"]["questions"].values())


def test_wrong_backend_scores_0_percent_everywhere():
    r = se.evaluate(ShapesOracle(_examples(), "wrong", SEED, N), n=N, seed=SEED)
    assert set(_all_accuracies(r)) == {0.0}
    lp = r["loop"]
    # no verdict in "I cannot tell": the loop runs to its cap (draw, check, 2 x (fix, recheck))
    assert lp["loop"]["mean_calls"] == 6 and lp["k"] == 6 and lp["m"] == 3
    assert lp["equal_calls_last"]["mean_calls"] == 6 and lp["best_of_self_check"]["mean_calls"] == 6


def test_loop_repairs_a_bad_first_draw(tmp_path):
    b = ShapesOracle(_examples(), "bad_first_draw", SEED, N)
    r = se.evaluate(b, n=N, seed=SEED, metrics=["loop"], runs_dir=tmp_path)
    lp = r["loop"]
    assert lp["single"]["accuracy"] == 0.0 and lp["loop"]["accuracy"] == 1.0 and lp["gain_points"] == 100.0
    # draw (empty), check says no, fix, recheck says yes
    assert lp["loop"]["mean_calls"] == 4 and lp["loop"]["mean_fix_rounds"] == 1
    assert lp["loop"]["mean_forwards"] == 2 * (IMAGE_FORWARDS + TEXT_FORWARDS)
    # blind redraws and self-checked redraws cannot repair a model that always draws wrong
    assert lp["equal_calls_last"]["accuracy"] == 0.0 and lp["best_of_self_check"]["accuracy"] == 0.0
    assert lp["best_of_self_check"]["mean_calls"] == 4  # 2 draws, 2 checks that say no
    assert (tmp_path / "scene-0000" / "report.html").is_file()
    md = se.format_markdown(r)
    assert "+100.0 points" in md and "(b) draw-check-refine" in md and "| 4/4 | 100.0% | 4.00 |" in md


def test_loop_in_thinking_mode_draws_every_image_in_thinking_mode(tmp_path):
    b = ShapesOracle(_examples(), "bad_first_draw", SEED, N)
    r = se.evaluate(b, n=N, seed=SEED, metrics=["loop_thinking"], runs_dir=tmp_path)
    lp = r["loop_thinking"]
    assert lp["mode"] == "thinking" and "loop" not in r
    assert lp["single"]["accuracy"] == 0.0 and lp["loop"]["accuracy"] == 1.0 and lp["loop"]["mean_calls"] == 4
    # single shot, the workflow's first draw and the blind redraws: thinking mode only
    assert set(b.draw_modes) == {"thinking"} and b.draw_modes["thinking"] >= 2 * N
    assert (tmp_path / "thinking" / "scene-0000" / "report.html").is_file()
    md = se.format_markdown(r)
    assert "### Loop vs single shot, every draw in thinking mode" in md and "+100.0 points" in md
    with pytest.raises(ValueError, match="mode"):
        se.loop_workflow("sketch")


def test_markdown_and_results_section(tmp_path):
    r = se.evaluate(ShapesOracle(_examples(), "perfect", SEED, N), n=2, seed=SEED, metrics=["understanding", "t2i", "edits"])
    md = se.format_markdown(r, model="Fake", machine="a test machine")
    assert md.startswith("## shapes_eval") and "understanding: count questions" in md and "edits: all" in md
    assert "_Measured" in md and "a test machine" in md
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Foundation\n\nold figures\n\n## Tools\n\ntools figures\n")
    se.write_results(md, path)
    se.write_results(md.replace("Fake", "Fake again"), path)  # replaced, not appended twice
    text = path.read_text()
    assert text.count("## shapes_eval") == 1 and "Fake again" in text and text.startswith("# Benchmark results")
    assert "old figures" in text and "tools figures" in text
    # a section in the middle is replaced in place
    path.write_text(text.replace("## Tools", "## Tools-moved") + "\n")
    path.write_text("# B\n\n" + md + "\n## After\n\nafter figures\n")
    se.write_results(md.replace("Fake", "Third"), path)
    text = path.read_text()
    assert text.count("## shapes_eval") == 1 and "Third" in text and text.rstrip().endswith("after figures")


def test_main_with_a_given_backend_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--n", "2", "--seeds", str(SEED), str(SEED + 1), "--metrics", "t2i", "--json", str(out)]
    assert se.main(args, backend=ShapesOracle(_examples(), "perfect", SEED, N)) == 0
    data = json.loads(out.read_text())
    assert data["seeds"] == [SEED, SEED + 1]
    for run in data["runs"]:
        assert run["t2i"]["overall"] == {**run["t2i"]["overall"], "correct": 2, "total": 2, "accuracy": 1.0}
    row = data["pooled"]["rows"]["text-to-image, held-out phrasings"]
    assert (row["correct"], row["total"], row["per_seed"]) == (4, 4, [1.0, 1.0]) and row["ci"][1] == 1.0
    assert "text-to-image" in capsys.readouterr().out


def test_main_without_the_default_model_exits_2(tmp_path, monkeypatch, capsys):
    import lladauni.model_core.checkpoint as mc

    monkeypatch.setattr(mc, "DEFAULT_CHECKPOINT_DIR", tmp_path)
    assert se.main(["--n", "1"]) == 2
    assert "embedded default model is missing" in capsys.readouterr().err


def test_backend_errors_count_as_wrong():
    class Failing(ShapesOracle):
        def generate_image(self, prompt, **kw):
            raise RuntimeError("boom")

    r = se.evaluate(Failing(_examples()), n=2, seed=SEED, metrics=["t2i"])
    assert r["t2i"]["overall"]["accuracy"] == 0.0 and r["t2i"]["overall"]["errors"] == 2


def test_shapes_decoder_bench_on_the_default_model(tmp_path):
    """bench.shapes_decoder: one row per (steps, guidance), exactly one marked as the checkpoint's own
    (turbo 8 steps, CFG 0.5 from lladauni.json), counts within range; its section sits beside shapes_eval's."""
    from bench import shapes_decoder as sd
    from lladauni.model_core import LLaDAUni

    model = LLaDAUni.from_pretrained(components=("backbone", "image_tokenizer", "decoder"), device="cpu")
    res = sd.run(model, 3, SEED)
    assert len(res["rows"]) == len(sd.STEPS) * len(sd.SCALES)
    assert [(r["steps"], r["cfg"]) for r in res["rows"] if r["own"]] == [(8, 0.5)]
    assert all(0 <= r["correct"] <= 3 for r in res["rows"]) and 0 <= res["codes_ok"] <= 3
    assert 0 <= res["own_failed_seen_by_reencoding"] <= res["own_failed"] <= 3
    assert model.decoder.sampler.guidance.scale == 0.5  # the sweep leaves the model's sampler as it was
    md = sd.format_markdown(res, model="Default", machine="a test machine")
    assert md.startswith("## shapes_decoder") and "| 8 | 0.5 (checkpoint default) |" in md
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## shapes_eval: quality\n\neval figures\n")
    se.write_results(md, path, section="shapes_decoder")
    se.write_results(md.replace("Default", "Again"), path, section="shapes_decoder")
    text = path.read_text()
    assert text.count("## shapes_decoder") == 1 and "Again" in text and "eval figures" in text
