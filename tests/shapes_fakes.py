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
from lladauni.model_core.training import checker, shapes, tasks

IMAGE_FORWARDS = 10
TEXT_FORWARDS = 3
_CHECK = re.compile(r'^Does this image show: "(?P<prompt>.*)"\?')
_FIX = "Change the image so that it shows: "


class ShapesOracle:
    name = "shapes-oracle"
    accepts_codes = False  # the workflow hands it pixels, which it reads with the checker

    def __init__(self, examples: Sequence[shapes.Example] = (), mode: str = "perfect") -> None:
        if mode not in ("perfect", "wrong", "bad_first_draw"):
            raise ValueError(mode)
        self.mode = mode
        self.answers = {(ex.scene.signature(), qa.question): qa.answer for ex in examples for qa in ex.questions}
        self.targets = {(e.source.signature(), e.instruction): e.target for ex in examples for e in ex.edits}
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
        if question == tasks.DESCRIBE_QUESTION:
            return self._text(shapes.caption(scene))
        m = _CHECK.match(question)
        if m:
            return self._text(tasks.verify_answer(shapes.parse_caption(m["prompt"]), scene))
        return self._text(self.answers[scene.signature(), question] + ".")

    def generate_image(self, prompt: str, *, image_h: int = 96, mode: str = "normal", **options: Any) -> ImageResult:
        self.calls["generate_image"] += 1
        self.draw_modes[mode] += 1
        if self.mode != "perfect":
            return self._image(None, image_h)
        scene = shapes.parse_caption(prompt)
        return self._image(scene, image_h, shapes.plan(scene) if mode == "thinking" else None)

    def edit_image(self, image: Any, instruction: str, **options: Any) -> ImageResult:
        self.calls["edit_image"] += 1
        if self.mode == "wrong":
            return self._image(None)
        if instruction.startswith(_FIX):
            return self._image(shapes.parse_caption(instruction[len(_FIX):].split(".")[0]))
        return self._image(self.targets[checker.read_scene(image).signature(), instruction])

    def chat(self, messages: Any, **options: Any) -> TextResult:
        self.calls["chat"] += 1
        return self._text("ok")

    def generate_interleaved(self, prompt: str, **options: Any):
        raise NotImplementedError

    def encode_image(self, image: Any):
        raise NotImplementedError

    def decode_image(self, codes: Any, h: int, w: int, **options: Any):
        raise NotImplementedError
