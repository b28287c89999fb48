"""A fake Backend for the shapes world (shared by test_shapes_eval.py and test_demo_cli.py).

``ShapesOracle`` reads scenes back from pixels with the pixel checker (exact on clean renders) and
answers from them:

* ``perfect``: answers every question, caption and check like the shapes world would; draws the
  scene its prompt describes; edits to the edit's target scene; fixes to the requested scene.
* ``wrong``: answers nonsense and draws an empty white canvas.
* ``bad_first_draw``: ``perfect``, except that every ``generate_image`` draws an empty canvas, so
  only a check followed by a fix edit can produce the requested scene.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import torch
from PIL import Image

from lladauni.model_core.generation.results import GenerationStats, ImageResult, TextResult
from lladauni.model_core.training import checker, phrasing, puzzles, shapes, tasks

IMAGE_FORWARDS = 10
TEXT_FORWARDS = 3
_CHECK = re.compile(r'^Does this image show: "(?P<prompt>.*)"\?')
_FIX = "Change the image so that it shows: "


def _key(text: str) -> str:
    """Texts compared without case, punctuation or spacing (phrasings vary in all three)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


class ShapesOracle:
    name = "shapes-oracle"
    accepts_codes = False  # the workflow hands it pixels, which it reads with the checker

    def __init__(self, examples: Sequence[shapes.Example] = (), mode: str = "perfect", seed: int | None = None,
                 puzzles_n: int = 0) -> None:
        """``seed``: the eval seed whose phrasings (``bench.shapes_eval.phrased_*``) and puzzles it must know."""
        from bench import shapes_eval as se

        if mode not in ("perfect", "wrong", "bad_first_draw"):
            raise ValueError(mode)
        self.mode = mode
        self.answers, self.targets = {}, {}
        splits = (None,) if seed is None else (None, *se.PHRASINGS)
        for ex in examples:
            for split in splits:
                qs = se.phrased_questions(seed, ex, split) if split else [q.question for q in ex.questions]
                self.answers.update({(ex.scene.signature(), _key(q)): qa.answer for q, qa in zip(qs, ex.questions)})
                es = se.phrased_edits(seed, ex, split) if split else [e.instruction for e in ex.edits]
                self.targets.update({(e.source.signature(), _key(t)): e.target for t, e in zip(es, ex.edits)})
        for i in range(puzzles_n):
            p = puzzles.make_puzzle(puzzles.puzzle_rng(seed, i), split="heldout")
            self.answers[p.source.signature(), _key(p.text)] = p.question.answer
            self.answers[p.target.signature(), _key(p.text.rsplit(". ", 1)[-1])] = p.question.answer
            for e, t in zip(p.steps, p.instructions):
                self.targets[e.source.signature(), _key(t)] = e.target
        self.calls: Counter[str] = Counter()
        self.draw_modes: Counter[str] = Counter()

    # -- helpers
    @staticmethod
    def _text(text: str) -> TextResult:
        return TextResult(text, [], [], GenerationStats(forwards=TEXT_FORWARDS))

    @staticmethod
    def _image(scene: shapes.Scene | None, size: int = 96, thinking: str | None = None) -> ImageResult:
        img = Image.new("RGB", (size, size), shapes.BACKGROUND) if scene is None else shapes.render(scene, size)
        return ImageResult(torch.zeros(0, dtype=torch.long), 0, 0, image=img, thinking=thinking,
                           stats=GenerationStats(forwards=IMAGE_FORWARDS))

    # -- the Backend protocol
    def understand(self, image: Any, question: str, **options: Any) -> TextResult:
        self.calls["understand"] += 1
        if self.mode == "wrong":
            return self._text("I cannot tell")
        scene = checker.read_scene(image)
        if question == tasks.DESCRIBE_QUESTION or question in {f.text for f in phrasing.DESCRIBE_FRAMES} \
                or any(question.lower().rstrip(".?! ") == f.text.lower().rstrip(".?!") for f in phrasing.DESCRIBE_FRAMES):
            return self._text(shapes.caption(scene))
        m = _CHECK.match(question)
        if m:
            return self._text(tasks.verify_answer(shapes.parse_caption(m["prompt"]), scene))
        answer = self.answers.get((scene.signature(), _key(question)))
        return self._text("I cannot tell" if answer is None else answer + ".")

    def generate_image(self, prompt: str, *, image_h: int = 96, mode: str = "normal", **options: Any) -> ImageResult:
        self.calls["generate_image"] += 1
        self.draw_modes[mode] += 1
        if self.mode != "perfect":
            return self._image(None, image_h)
        scene = phrasing.parse_request(prompt)
        return self._image(scene, image_h, shapes.plan(scene) if mode == "thinking" and scene else None)

    def edit_image(self, image: Any, instruction: str, **options: Any) -> ImageResult:
        self.calls["edit_image"] += 1
        if self.mode == "wrong":
            return self._image(None)
        if instruction.startswith(_FIX):
            return self._image(shapes.parse_caption(instruction[len(_FIX):].split(".")[0]))
        return self._image(self.targets.get((checker.read_scene(image).signature(), _key(instruction))))

    def chat(self, messages: Any, **options: Any) -> TextResult:
        self.calls["chat"] += 1
        return self._text("ok")

    def generate_interleaved(self, prompt: str, **options: Any):
        raise NotImplementedError

    def encode_image(self, image: Any):
        raise NotImplementedError

    def decode_image(self, codes: Any, h: int, w: int, **options: Any):
        raise NotImplementedError
