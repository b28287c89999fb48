"""Training code: the compact tokenizer, block-diffusion batches, every stage for a few steps (losses
fall), resumable runs, and a smoke-trained checkpoint that the library loads and runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lladauni.model_core import LLaDAUni, TextTokenizer
from lladauni.model_core.generation.prompts import ImageCodes, PromptBuilder
from lladauni.model_core.training import shapes, tasks
from lladauni.model_core.training.build import STAGES, build_shapes_model
from lladauni.model_core.training.corpus import BatchBuilder, task_sequence
from lladauni.model_core.training.phrasing import parse_request
from lladauni.model_core.training.shapes import Scene, Shape, caption, render, sample_scene
from lladauni.model_core.training.spec import ShapesModelSpec, StageSteps
from lladauni.model_core.training.text_tokenizer import SPECIAL_TOKENS, build_compact_tokenizer


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "model"
    spec = ShapesModelSpec.smoke()
    record = build_shapes_model(out, spec, progress=False)
    return out, spec, record


# ------------------------------------------------------------------------------------------------ tokenizer
def test_compact_tokenizer_layout_and_round_trip(tmp_path):
    texts = ["a red circle at the top left", "Describe the image.", "How many shapes are there?"] * 20
    layout = build_compact_tokenizer(texts, tmp_path, num_codes=16, grid_sides=(3, 4))
    tok = TextTokenizer.from_pretrained(tmp_path)
    bpe = layout["special"]
    assert layout["image_token_offset"] == bpe + len(SPECIAL_TOKENS) + 2
    assert layout["vocab_size"] == layout["image_token_offset"] + 16 == len(tok)
    assert tok.image_code0 == layout["image_token_offset"]
    assert tok.special.mask == bpe + SPECIAL_TOKENS.index("<|mask|>")
    assert tok.size_token_ids == {3: layout["sizes"], 4: layout["sizes"] + 1}
    for text in ["a red circle at the top left", "Ünïcode 😀 words never seen", "<role>HUMAN</role> hi"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|mask|>") == [tok.special.mask]
    with pytest.raises(ValueError, match="side 8"):
        tok.size_token_id(8)


def test_compact_tokenizer_is_deterministic(tmp_path):
    texts = [caption(sample_scene(np.random.default_rng(i))) for i in range(200)]
    build_compact_tokenizer(texts, tmp_path / "a", num_codes=4)
    build_compact_tokenizer(texts, tmp_path / "b", num_codes=4)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_compact_tokenizer_splits_the_plurals_it_is_told(tmp_path):
    texts = ["How many circles are there?", "a red circle at the top left", "three shapes", "yes", "a shape"] * 30

    def pieces(tok, text):
        return [tok.decode([i]) for i in tok.encode(text)]

    build_compact_tokenizer(texts, tmp_path / "plain", num_codes=4)
    plain = TextTokenizer.from_pretrained(tmp_path / "plain")
    assert " circles" in pieces(plain, "How many circles are there?")  # one token counting alone uses
    build_compact_tokenizer(texts, tmp_path / "split", num_codes=4, plural_stems=("circle", "shape"))
    split = TextTokenizer.from_pretrained(tmp_path / "split")
    assert pieces(split, "How many circles are there?") == ["How", " many", " circle", "s", " are", " there", "?"]
    assert pieces(split, "three shapes.")[-3:] == [" shape", "s", "."]
    assert split.encode("a red circle") == [split.encode(w)[0] for w in ("a", " red", " circle")]
    for text in ("circles circless yes", "Circles, shapes; shapes's", "a circle"):
        assert split.decode(split.encode(text)) == text
    with pytest.raises(ValueError, match="plural_stems"):
        build_compact_tokenizer(texts, tmp_path / "bad", num_codes=4, plural_stems=("circle)|(",))


# ------------------------------------------------------------------------------------------------ tasks
def test_tasks_texts_match_the_workflow_and_agent_prompts():
    from lladauni.agent import prompts as agent_prompts

    assert tasks.INSPECT_PROMPT == agent_prompts.INSPECT
    assert tasks.CLAIMS_PROMPT == agent_prompts.CLAIMS


def test_verify_answers_name_every_problem():
    want = Scene((Shape("circle", "red", "top left"), Shape("square", "blue", "center")))
    got = Scene((Shape("circle", "green", "top left"), Shape("triangle", "yellow", "bottom")))
    ans = tasks.verify_answer(want, got)
    assert ans.startswith("no, ")
    assert "the shape at the top left is a green circle, not a red circle" in ans
    assert "the blue square in the center is missing" in ans
    assert "there is an extra yellow triangle at the bottom" in ans
    assert tasks.verify_answer(want, want) == "yes"


@pytest.mark.parametrize("kind", tasks.TASKS)
def test_every_task_kind_is_consistent(kind):
    rng = np.random.default_rng(5)
    for _ in range(30):
        t = tasks.sample_task(kind, rng)
        if kind in ("t2i", "t2i_thinking", "edit", "fix"):
            assert t.target is not None
        if kind in ("edit", "fix"):
            assert t.source is not None and t.source.signature() != t.target.signature()
        if kind == "verify":
            assert (t.answer == "yes") == (t.source.signature() == t.about[-1].signature())
        if kind in ("t2i", "claims", "verify", "fix"):  # the request (any phrasing) names the scene asked for
            request = t.text.split('"')[1] if kind == "verify" else t.text
            if kind == "claims":
                request = t.text.split("Request: ")[1]
            if kind == "fix":
                request = t.text[len("Change the image so that it shows: "):].split(". no")[0].split(". yes")[0]
            asked = t.target if kind in ("t2i", "fix") else t.about[-1]
            assert parse_request(request).signature() == asked.signature(), t.text


def test_corrupt_scene_always_differs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = sample_scene(rng)
        assert tasks.corrupt_scene(s, rng).signature() != s.signature()


# ------------------------------------------------------------------------------------------------ batches
def test_sequences_use_the_inference_prompts(smoke_build):
    out, spec, _ = smoke_build
    tok = TextTokenizer.from_pretrained(out)
    pb = PromptBuilder(tok, tok.image_code0)
    rng = np.random.default_rng(0)
    scene = sample_scene(rng)
    codes = ImageCodes(torch.arange(9) % spec.num_codes, 3, 3)
    t2i = task_sequence(tasks.Task("t2i", caption(scene), target=scene), pb, tok, {"target": codes}, rng, null_rate=0.0)
    assert t2i.prompt == pb.text_to_image(caption(scene), 3, 3)[0]
    assert t2i.response == (codes.codes + tok.image_code0).tolist() + [tok.special.image_end]
    qa = task_sequence(tasks.Task("qa", "How many shapes are there?", "2", source=scene), pb, tok, {"source": codes}, rng, chat_rate=0.0)
    assert qa.prompt == pb.understanding(codes, "How many shapes are there?")
    assert qa.response == tok.encode("2") + [tok.special.eos]


def test_block_diffusion_masking(smoke_build):
    out, spec, _ = smoke_build
    tok = TextTokenizer.from_pretrained(out)
    bb = BatchBuilder(tok, tok.image_code0, lambda scenes: torch.zeros(len(scenes), 9, dtype=torch.long), 3,
                      batch_size=16, block_length=32)
    rng = np.random.default_rng(1)
    batch = bb(rng)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape[1] % 32 == 0
    masked = ids == tok.special.mask
    assert torch.equal(masked, labels != -100)  # loss exactly on the masked tokens
    for row in range(ids.shape[0]):
        pos = torch.nonzero(masked[row]).flatten()
        assert pos.numel() >= 1
        assert len({int(p) // 32 for p in pos}) == 1  # one active block per row
        last = int(torch.nonzero(ids[row] != tok.special.eos).max()) if bool((ids[row] != tok.special.eos).any()) else 0
        assert int(pos.max()) // 32 >= last // 32  # nothing after the active block is visible



def test_full_mask_share_masks_whole_answer_blocks(smoke_build):
    """With full_mask=1 every text answer's active block is masked whole (the sampler's first state), so the
    verdict of "no, the red circle ... is missing" cannot be read off the visible explanation; image
    responses keep the usual t ~ U(0.05, 1) masking."""
    out, _, _ = smoke_build
    tok = TextTokenizer.from_pretrained(out)
    mix = {"verify": 1.0, "qa": 1.0, "t2i": 1.0}
    enc = lambda scenes: torch.zeros(len(scenes), 9, dtype=torch.long)
    rng = np.random.default_rng(3)
    bb = BatchBuilder(tok, tok.image_code0, enc, 3, batch_size=64, block_length=32, mix=mix, full_mask=1.0)
    seqs = bb.sequences(rng, 64)
    partial_image = 0
    for seq in seqs:
        ids, labels = bb.mask_sequence(seq, rng)
        start = max(len(seq.prompt), (len(ids) - 32))
        active = range(start, len(ids))
        if seq.kind in ("verify", "qa"):
            assert all(ids[p] == tok.special.mask for p in active), seq.kind
        else:
            partial_image += any(ids[p] != tok.special.mask for p in active)
    assert partial_image > 0  # image responses are not forced whole
    plain = BatchBuilder(tok, tok.image_code0, enc, 3, batch_size=64, block_length=32, mix={"verify": 1.0})
    rng = np.random.default_rng(3)
    partial = 0
    for seq in plain.sequences(rng, 64):
        ids, _ = plain.mask_sequence(seq, rng)
        partial += any(ids[p] != tok.special.mask for p in range(max(len(seq.prompt), len(ids) - 32), len(ids)))
    assert partial > 0  # without the share, answers are usually only partly masked
    with pytest.raises(ValueError, match="full_mask"):
        BatchBuilder(tok, tok.image_code0, enc, 3, full_mask=1.5)

# ------------------------------------------------------------------------------------------------ stages
def test_every_stage_loss_falls(smoke_build):
    _, _, record = smoke_build
    assert set(record["stages"]) == set(STAGES) | {"decoder_second"}  # the decoder's second schedule has its record
    for name in ("image_tokenizer", "vae", "decoder", "backbone"):
        st = record["stages"][name]
        assert st["loss_last"] < st["loss_first"], (name, st)


def test_smoke_checkpoint_runs_every_task(smoke_build):
    out, spec, _ = smoke_build
    model = LLaDAUni.from_pretrained(out, components=("backbone", "image_tokenizer", "decoder"))
    assert model.defaults["image_size"] == [96, 96]
    assert model.defaults["decoder_cfg"] == {"turbo": spec.decoder_cfg}
    scene = sample_scene(np.random.default_rng(3))
    img = model.generate_image(caption(scene), steps=4, seed=0, decoder_steps=2)
    assert (img.h, img.w) == (3, 3) and img.image.size == (96, 96)
    ans = model.understand(render(scene, 96), "How many shapes are there?", gen_length=32, steps=4)
    assert isinstance(ans.text, str)
    ed = model.edit_image(render(scene, 200), "Make the shape blue.", steps=4, seed=0, decoder_steps=2)
    assert ed.image.size == (96, 96)
    data = json.loads((out / "training.json").read_text())
    assert data["spec"]["num_codes"] == spec.num_codes


def test_backbone_stage_resumes_exactly(tmp_path, smoke_build, monkeypatch):
    """A run stopped after a save and resumed ends with the weights of an uninterrupted run."""
    from lladauni.model_core import LLaDA2Backbone
    from lladauni.model_core.training import common
    from lladauni.model_core.training.build import _load_image_tokenizer
    from lladauni.model_core.training.stages import init_backbone as _init_backbone, encode_scenes, train_backbone

    out, spec, _ = smoke_build
    spec = ShapesModelSpec.smoke()
    spec.steps = StageSteps(**{**spec.steps.__dict__, "backbone": 6})
    monkeypatch.setattr(common, "SAVE_EVERY", 2)
    tok = TextTokenizer.from_pretrained(out)
    net = _load_image_tokenizer(out)
    config = spec.backbone_config(len(tok), tok.image_code0, tok.special.pad)
    # a phrasing ramp inside the run: the batches hang on the step, which a resumed run must pass on the same
    batches = BatchBuilder(tok, tok.image_code0, lambda sc: encode_scenes(net, sc, spec), 3, batch_size=4, ramp=(2, 2))

    def fresh():
        m = LLaDA2Backbone(config)
        _init_backbone(m, spec.seed)
        return m

    seen = []

    def recorded(rng, gen, step):
        seen.append(step)
        return batches(rng, gen, step)

    straight, log_a = train_backbone(spec, fresh(), recorded, tmp_path / "a", progress=False)
    assert seen == list(range(6))
    calls = {"n": 0}

    def flaky(rng, gen, step):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return batches(rng, gen, step)

    with pytest.raises(KeyboardInterrupt):
        train_backbone(spec, fresh(), flaky, tmp_path / "b", progress=False)
    resumed, log_b = train_backbone(spec, fresh(), batches, tmp_path / "b", progress=False)
    assert log_a.series() == log_b.series()
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_backbone_schedule_runs_from_the_first(tmp_path):
    spec = ShapesModelSpec.smoke()
    spec.steps = StageSteps(**{**spec.steps.__dict__, "backbone": 3, "backbone_second": 2})
    rec = build_shapes_model(tmp_path / "m", spec, progress=False, stages=("tokenizer", "image_tokenizer", "backbone"))
    assert rec["stages"]["backbone"]["steps"] == 3 and rec["stages"]["backbone_second"]["steps"] == 2
    assert (tmp_path / "m.work" / "backbone_second.state.pt").is_file()


def test_unknown_stage_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        build_shapes_model(tmp_path / "x", ShapesModelSpec.smoke(), stages=("bogus",))


def test_masked_loss_weighs_tokens_or_sequences():
    from lladauni.model_core.training.stages import masked_loss

    ce = torch.tensor([4.0, 1.0, 2.0, 3.0])
    rows = torch.tensor([0, 1, 1, 1])  # row 0: 4; row 1: 1, 2, 3; row 2: nothing masked
    assert masked_loss(ce, rows, 3, "token").item() == pytest.approx(2.5)
    assert masked_loss(ce, rows, 3, "sequence").item() == pytest.approx((4.0 + 2.0) / 2)
    with pytest.raises(ValueError, match="loss_norm"):
        masked_loss(ce, rows, 3, "row")


def test_rows_cut_to_their_own_length_give_the_same_outputs(smoke_build):
    """The backbone stage runs rows of equal length together, cut to their own length; block-causal
    attention makes that exact: a row's padding lies in later blocks, which it cannot see."""
    from lladauni.model_core import LLaDA2Backbone
    from lladauni.model_core.layers.attention import AttentionMask
    from lladauni.model_core.training.build import _load_image_tokenizer
    from lladauni.model_core.training.stages import init_backbone as _init_backbone, encode_scenes, row_lengths

    out, spec, _ = smoke_build
    tok = TextTokenizer.from_pretrained(out)
    net = _load_image_tokenizer(out)
    batch = BatchBuilder(tok, tok.image_code0, lambda sc: encode_scenes(net, sc, spec), 3, batch_size=12)(
        np.random.default_rng(5))
    ids, labels = batch["input_ids"], batch["labels"]
    lengths = row_lengths(labels, spec.block_length)
    assert len(set(lengths.tolist())) > 1 and int(lengths.max()) == ids.shape[1]
    for r in range(ids.shape[0]):
        n = int(lengths[r])
        assert n % spec.block_length == 0 and (labels[r, n:] == -100).all() and (labels[r, n - spec.block_length:n] != -100).any()
    m = LLaDA2Backbone(spec.backbone_config(len(tok), tok.image_code0, tok.special.pad))
    _init_backbone(m, 0)
    m.eval()
    with torch.no_grad():
        full = m(ids, None, batch["mask"], logits_for=0).hidden_states
        for r in range(ids.shape[0]):
            n = int(lengths[r])
            own = m(ids[r:r + 1, :n], None, AttentionMask.block_causal(n, spec.block_length), logits_for=0).hidden_states
            torch.testing.assert_close(own[0], full[r, :n], rtol=1e-4, atol=1e-4)


def test_question_kinds_are_drawn_evenly():
    from lladauni.model_core.training.shapes import COLORS, POSITIONS

    rng = np.random.default_rng(3)
    counts = {"count": 0, "presence": 0, "position": 0, "color": 0}
    for _ in range(800):
        a = tasks.sample_task("qa", rng).answer
        k = "count" if a.isdigit() else "presence" if a in ("yes", "no") else "position" if a in POSITIONS else "color"
        assert k != "color" or a in COLORS
        counts[k] += 1
    # a scene with no shape has only count and presence questions; otherwise each kind is a quarter
    # (drawing among all questions instead gives counts and presence a third each)
    assert all(0.18 <= c / 800 <= 0.32 for c in counts.values()), counts



def test_task_options_weight_question_kinds_and_keep_right_drawings():
    from lladauni.model_core.training.shapes import POSITIONS

    opts = tasks.TaskOptions(qa_kinds={"presence": 3, "count": 1})
    rng = np.random.default_rng(5)
    answers = [tasks.sample_task("qa", rng, opts, split=None).answer for _ in range(400)]
    presence = sum(a in ("yes", "no") for a in answers)
    assert sum(a.isdigit() for a in answers) + presence == 400  # weight 0: never asked
    assert 0.68 <= presence / 400 <= 0.82, presence
    # fix_correct=1: the image already shows the request and is the target; the feedback complains wrongly
    rng = np.random.default_rng(6)
    items = [tasks.sample_task("fix", rng, tasks.TaskOptions(fix_correct=1.0), split=None) for _ in range(40)]
    assert all(t.source == t.target and caption(t.target) in t.text for t in items)
    assert sum(", not a " in t.text or "missing" in t.text or "extra" in t.text for t in items) >= 25
    plain = [tasks.sample_task("fix", rng) for _ in range(40)]
    assert all(t.source != t.target for t in plain)
    # the defaults draw exactly as before (same rng stream)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    assert [tasks.sample_task(k, a) for k in tasks.TASKS] == [tasks.sample_task(k, b, tasks.TaskOptions()) for k in tasks.TASKS]
    for bad in ({"qa_kinds": {"size": 1}}, {"qa_kinds": {"count": -1}}, {"qa_kinds": {"count": 0}},
                {"fix_correct": 2.0}, {"fix_rate": 0.1}, {"count_present": -0.1}, {"count_present": "half"}, {"count_list": 1.5}):
        with pytest.raises(ValueError):
            tasks.TaskOptions.from_dict(bad)
    with pytest.raises(ValueError, match="task options"):
        build_shapes_model("/nonexistent/out", ShapesModelSpec(task_options={"fix_rate": 0.1}))
    with pytest.raises(ValueError, match="decoder_cfg"):
        ShapesModelSpec(decoder_cfg=-0.5)

def test_count_present_asks_about_kinds_the_scene_holds():
    """Drawn from all kinds, most "How many <kind>s" answers are 0; count_present shifts that share."""

    def kind_counts(option: float) -> tuple[int, int]:
        rng = np.random.default_rng(11)
        opts = tasks.TaskOptions(qa_kinds={"count": 1}, count_present=option)
        items = [tasks.sample_task("qa", rng, opts, split=None) for _ in range(1200)]
        per_kind = [t for t in items if t.text != shapes.COUNT_ALL_QUESTION]
        for t in per_kind:  # every answer is read off the scene shown
            kind = t.text.split()[2][:-1]
            assert t.answer == str(len(t.source.find(kind=kind))), t
        return len(per_kind), sum(t.answer == "0" for t in per_kind)

    n_plain, zero_plain = kind_counts(0.0)
    n_present, zero_present = kind_counts(0.6)
    assert 0.5 <= zero_plain / n_plain <= 0.66, (zero_plain, n_plain)  # (3/4)^n averaged over n = 1..3
    # 40% of items still draw from all kinds: 0.4 * 0.58 = 23% zeros
    assert 0.16 <= zero_present / n_present <= 0.30, (zero_present, n_present)
    assert 0.4 <= n_present / 1200 <= 0.6  # the total-count question keeps its share


def test_count_list_answers_name_the_shapes_counted():
    from bench.shapes_eval import answer_correct

    rng = np.random.default_rng(12)
    opts = tasks.TaskOptions(qa_kinds={"count": 1}, count_present=1.0, count_list=1.0)
    items = [t for t in (tasks.sample_task("qa", rng, opts, split=None) for _ in range(300))
             if t.text != shapes.COUNT_ALL_QUESTION]
    assert len(items) > 100
    for t in items:
        kind = t.text.split()[2][:-1]
        found = t.source.find(kind=kind)
        assert t.answer == f"{len(found)}: {shapes.join_phrases([s.describe() for s in found])}."
        assert answer_correct(t.answer, str(len(found)))  # the benchmark reads the number
    # the total count and every other kind of question keep their short answers
    rng = np.random.default_rng(12)
    others = [tasks.sample_task("qa", rng, tasks.TaskOptions(count_list=1.0), split=None) for _ in range(200)]
    assert all(":" not in t.answer for t in others if t.text == shapes.COUNT_ALL_QUESTION or not t.text.startswith("How many"))


def test_shape_questions_ask_for_the_kind_in_a_cell():
    rng = np.random.default_rng(13)
    opts = tasks.TaskOptions(qa_kinds={"color": 1}, shape_questions=0.5)
    items = [tasks.sample_task("qa", rng, opts, split=None) for _ in range(300)]
    asked = [t for t in items if t.text.startswith("What shape is")]
    assert 0.38 <= len(asked) / 300 <= 0.62
    for t in asked:
        phrase = t.text[len("What shape is "):-1]
        cell = next(p for p in shapes.POSITIONS if shapes.position_phrase(p) == phrase)
        assert t.answer == t.source.at(cell).kind
    assert all(t.answer in shapes.COLORS for t in items if t not in asked)


def test_backbone_init_scales_with_width():
    from lladauni.model_core import LLaDA2Backbone
    from lladauni.model_core.training.stages import init_backbone as _init_backbone

    spec = ShapesModelSpec.smoke()
    m = LLaDA2Backbone(spec.backbone_config(vocab_size=300, image_token_offset=268, pad_token_id=0))
    _init_backbone(m, 0)
    w = dict(m.named_parameters())
    q = next(p for n, p in w.items() if n.endswith("query_key_value.weight"))
    assert float(q.detach().std()) == pytest.approx(spec.hidden_size ** -0.5, rel=0.1)
    assert float(m.model.word_embeddings.weight.detach().std()) == pytest.approx(1.0, rel=0.05)
    assert all(float(b.abs().max()) == 0.0 for n, b in m.named_buffers() if n.endswith("expert_bias"))
    assert all(bool((p == 1).all()) for n, p in w.items() if n.endswith("norm.weight"))


def test_two_jobs_train_the_backbone_beside_the_decoder(tmp_path, smoke_build):
    """jobs=2 runs the backbone stage in a second process while this one trains the decoder; the
    checkpoint is complete and the backbone starts from the same weights and data as a one-job build."""
    _, spec, one_job = smoke_build
    rec = build_shapes_model(tmp_path / "m", spec, progress=False, jobs=2)
    assert rec["jobs"] == 2 and rec["wall_seconds"] > 0
    assert set(rec["stages"]) >= {"tokenizer", "image_tokenizer", "vae", "decoder", "backbone"}
    assert rec["stages"]["backbone"]["steps"] == spec.steps.backbone
    assert rec["stages"]["backbone"]["loss_first"] == pytest.approx(one_job["stages"]["backbone"]["loss_first"], rel=1e-3)
    pipe = LLaDAUni.from_pretrained(tmp_path / "m", device="cpu")
    assert pipe.generate_image("a red circle", image_h=96, image_w=96, steps=2, decode=False).codes.numel() == 9
    with pytest.raises(ValueError, match="jobs"):
        build_shapes_model(tmp_path / "x", spec, jobs=3)


@pytest.fixture
def grammar_calls(monkeypatch):
    """Counts calls of every phrasing.*_text function the tasks use (each still phrases)."""
    from lladauni.model_core.training import phrasing

    calls = {"n": 0}
    for name in ("request_text", "question_text", "describe_text", "shape_text", "edit_text"):
        real = getattr(phrasing, name)

        def counted(*args, _real=real, **kwargs):
            calls["n"] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(phrasing, name, counted)
    return calls


def test_phrasing_factor_zero_draws_only_canonical_texts(grammar_calls):
    rng = np.random.default_rng(5)
    canonical = [tasks.sample_task(k, rng, tasks.TaskOptions(phrasing=0.0)) for k in tasks.TASKS for _ in range(20)]
    assert grammar_calls["n"] == 0
    assert all(t.text == caption(t.target) for t in canonical if t.kind in ("t2i", "t2i_thinking"))
    assert all(t.text == tasks.DESCRIBE_QUESTION for t in canonical if t.kind == "caption")
    counts = {}
    for factor in (1.0, 0.5):
        grammar_calls["n"] = 0
        for k in tasks.TASKS:
            for _ in range(40):
                tasks.sample_task(k, rng, tasks.TaskOptions(phrasing=factor))
        counts[factor] = grammar_calls["n"]
    # half the factor, about half the grammar's phrasings (and the shape phrases inside phrased requests)
    assert counts[1.0] > 300 and 0.35 * counts[1.0] <= counts[0.5] <= 0.65 * counts[1.0], counts
    for bad in (-0.1, 1.5, "all"):
        with pytest.raises(ValueError, match="phrasing"):
            tasks.TaskOptions(phrasing=bad)


def test_phrasing_ramp_goes_from_canonical_texts_to_the_grammar(smoke_build, grammar_calls):
    from lladauni.model_core.training.corpus import phrasing_ramp

    assert [phrasing_ramp(s, 10, 20) for s in (0, 9, 10, 15, 29, 30, 99, None)] == [0, 0, 0, 0.25, 0.95, 1, 1, 1]
    assert phrasing_ramp(0, 0, 0) == 1.0 and phrasing_ramp(4, 5, 0) == 0.0 and phrasing_ramp(5, 5, 0) == 1.0
    with pytest.raises(ValueError, match="canonical"):
        phrasing_ramp(0, -1, 5)
    out, spec, _ = smoke_build
    tok = TextTokenizer.from_pretrained(out)
    bb = BatchBuilder(tok, tok.image_code0, lambda sc: torch.zeros(len(sc), 9, dtype=torch.long), 3, batch_size=16,
                      ramp=(100, 100), task_options=tasks.TaskOptions(fix_correct=0.2))
    assert bb.options_at(0).phrasing == 0.0 and bb.options_at(150).phrasing == 0.5
    assert bb.options_at(0).fix_correct == 0.2 and bb.options_at(None) == bb.task_options
    for step in (0, 99):
        bb(np.random.default_rng(step), None, step)
    assert grammar_calls["n"] == 0
    bb(np.random.default_rng(1), None, 200)
    assert grammar_calls["n"] > 0
    with pytest.raises(ValueError, match="ramp"):
        BatchBuilder(tok, tok.image_code0, lambda sc: None, 3, ramp=(0, -2))


def test_decoder_runs_its_before_step_hook_each_step(smoke_build):
    from lladauni.model_core.training.build import _load_image_tokenizer, _load_vae
    from lladauni.model_core.training.stages import train_decoder

    out, spec, _ = smoke_build
    seen = []
    train_decoder(spec, _load_image_tokenizer(out), _load_vae(out), None, progress=False, resume=False, total=3,
                  before_step=seen.append)
    assert seen == [0, 1, 2]


def test_retraining_the_backbone_drops_a_stale_second_schedule_record(tmp_path):
    spec = ShapesModelSpec.smoke()
    spec.steps = StageSteps(**{**spec.steps.__dict__, "backbone": 2, "backbone_second": 2})
    build_shapes_model(tmp_path / "m", spec, progress=False, stages=("tokenizer", "image_tokenizer", "backbone"))
    spec.steps = StageSteps(**{**spec.steps.__dict__, "backbone_second": 0})
    rec = build_shapes_model(tmp_path / "m", spec, progress=False, stages=("backbone",), resume=False)
    assert "backbone_second" not in rec["stages"] and rec["stages"]["backbone"]["steps"] == 2
    assert "backbone_second" not in json.loads((tmp_path / "m" / "training.json").read_text())["stages"]
