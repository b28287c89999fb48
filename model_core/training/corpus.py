"""Token sequences for the block-diffusion objective, built with the library's own prompt builder.

Each :class:`tasks.Task` becomes ``prompt ids`` (exactly what ``LLaDAUni`` sends at inference:
``PromptBuilder.text_to_image`` / ``thinking_phase1`` / ``understanding`` / ``editing`` / ``chat``)
and ``response ids`` (answer text + ``<|endoftext|>``, or image codes + ``<|/image|>``). Null
prompts of classifier-free guidance are trained too: 10% of text-to-image prompts use the
``<uncondition>`` prompt, 10% of edits the no-text and 10% the no-image prompt.

Block-diffusion training (what the sampler does, MODEL_SPEC §5): the sequence ``prompt + response``
is padded with ``<|endoftext|>`` to whole blocks of ``block_length`` counted from position 0; one
block that holds response tokens is drawn as the *active* block; earlier positions are clean,
later ones are cut off, and each response token of the active block is replaced by ``<|mask|>``
with probability t ~ U(0.05, 1) (at least one). The loss is the cross-entropy on masked tokens,
seen through the block-causal mask the sampler uses.

Text answers get a share of wholly masked blocks (``full_mask``, t = 1): the sampler starts every answer
from a wholly masked block, but with t ~ U(0.05, 1) an answer's first word is almost always learned with
later words in view, and "yes" / "no, the red circle ... is missing" give the verdict away. Without
this share the model learns to read a verdict off its own explanation rather than off the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from ..generation.prompts import ChatMessage, ImageCodes, PromptBuilder, UNCONDITION
from ..layers.attention import AttentionMask
from ..tokenizer import TextTokenizer
from .shapes import Scene
from .tasks import DEFAULT_MIX, TASKS, Task, TaskOptions, sample_task

__all__ = ["BatchBuilder", "FULL_MASK_KINDS", "Sequence_", "phrasing_ramp", "task_sequence", "texts_for_tokenizer"]

# Task kinds whose response is a text answer to an image (the ``full_mask`` share applies to them).
FULL_MASK_KINDS: tuple[str, ...] = ("caption", "qa", "verify", "claim")


@dataclass
class Sequence_:
    prompt: list[int]
    response: list[int]
    kind: str


def task_sequence(
    task: Task,
    prompts: PromptBuilder,
    tok: TextTokenizer,
    codes: dict[str, ImageCodes],
    rng: np.random.Generator,
    *,
    null_rate: float = 0.1,
    chat_rate: float = 0.25,
) -> Sequence_:
    """Prompt and response ids of one task; ``codes`` holds 'source' / 'target' image codes."""
    sp = tok.special
    eos = [sp.eos]
    if task.kind in ("t2i", "t2i_thinking"):
        tgt = codes["target"]
        image = (tgt.codes + prompts.offset).tolist() + [sp.image_end]
        if task.kind == "t2i":
            cond, null = prompts.text_to_image(task.text, tgt.h, tgt.w)
            return Sequence_(null if rng.random() < null_rate else cond, image, task.kind)
        if rng.random() < null_rate:
            return Sequence_(prompts.thinking_null(tgt.h, tgt.w), image, task.kind)
        body = tok.encode(task.answer) + prompts.header(tgt.h, tgt.w)
        return Sequence_(prompts.thinking_phase1(task.text), body + image, task.kind)
    if task.kind in ("caption", "qa", "verify", "claim"):
        template = "chat" if rng.random() < chat_rate else "official"
        return Sequence_(prompts.understanding(codes["source"], task.text, template=template), tok.encode(task.answer) + eos, task.kind)
    if task.kind == "claims":
        return Sequence_(prompts.chat([ChatMessage("user", task.text)]), tok.encode(task.answer) + eos, task.kind)
    if task.kind in ("edit", "fix"):
        src, tgt = codes["source"], codes["target"]
        full, no_text, no_image = prompts.editing([src], task.text, tgt.h, tgt.w)
        r = rng.random()
        prompt = no_text if r < null_rate else no_image if r < 2 * null_rate else full
        return Sequence_(prompt, (tgt.codes + prompts.offset).tolist() + [sp.image_end], task.kind)
    raise ValueError(f"unknown task kind {task.kind!r}")


def phrasing_ramp(step: Optional[int], canonical: int, ramp: int) -> float:
    """The factor on the grammar's phrasing shares (``TaskOptions.phrasing``) at training ``step``: 0 for the first
    ``canonical`` steps, rising linearly to 1 over the next ``ramp`` steps, then 1 (and 1 when ``step`` is None).

    Why a ramp: reading an image by what a text names (is there a <colour> <kind>, where is it, draw from a plan)
    is learned far sooner from the canonical texts alone. From scratch, 4,000 steps, one run each, first answer
    token on canonical questions about held-out scenes: canonical texts only gave colour 100%, position 78%,
    counts 84%; the grammar's full shares from step 0 gave 68%, 50% and 71%."""
    if canonical < 0 or ramp < 0:
        raise ValueError(f"phrasing_ramp: canonical={canonical}, ramp={ramp} must be >= 0")
    if step is None or step >= canonical + ramp:
        return 1.0
    if step < canonical:
        return 0.0
    return (step - canonical) / ramp


class BatchBuilder:
    """Draws tasks by ``mix``, encodes their scenes with ``encode`` (scenes -> (N, g*g) codes) and
    builds masked block-diffusion batches: {"input_ids", "labels", "mask", "kinds"}.

    ``full_mask``: the probability that a text answer's active block (:data:`FULL_MASK_KINDS`) is masked
    whole (see the module docstring); ``task_options`` how some kinds are drawn (:class:`tasks.TaskOptions`);
    ``ramp``: (canonical steps, ramp steps) of :func:`phrasing_ramp`, by the step passed to a call."""

    def __init__(
        self,
        tok: TextTokenizer,
        image_token_offset: int,
        encode,
        grid: int,
        *,
        batch_size: int = 32,
        block_length: int = 32,
        mix: Optional[dict[str, float]] = None,
        full_mask: float = 0.0,
        task_options: Optional[TaskOptions] = None,
        ramp: tuple[int, int] = (0, 0),
    ) -> None:
        phrasing_ramp(0, *ramp)  # refuses negative step counts
        self.ramp = (int(ramp[0]), int(ramp[1]))
        if not 0.0 <= full_mask <= 1.0:
            raise ValueError(f"full_mask must be a probability in [0, 1], got {full_mask}")
        self.full_mask = float(full_mask)
        self.task_options = task_options or TaskOptions()
        self.tok = tok
        self.prompts = PromptBuilder(tok, image_token_offset)
        self.encode = encode
        self.grid = grid
        self.batch_size = batch_size
        self.block = block_length
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task kinds in mix: {sorted(unknown)}")
        self.kinds = list(mix)
        w = np.array([mix[k] for k in self.kinds], dtype=np.float64)
        self.weights = w / w.sum()

    def options_at(self, step: Optional[int]) -> TaskOptions:
        """The task options of training ``step`` (None: the last step's)."""
        factor = phrasing_ramp(step, *self.ramp)
        if factor == 1.0:
            return self.task_options
        return replace(self.task_options, phrasing=self.task_options.phrasing * factor)

    def sequences(self, rng: np.random.Generator, n: int, step: Optional[int] = None) -> list[Sequence_]:
        options = self.options_at(step)
        tasks = [sample_task(self.kinds[int(rng.choice(len(self.kinds), p=self.weights))], rng, options)
                 for _ in range(n)]
        scenes: list[Scene] = []
        for t in tasks:
            scenes += [s for s in (t.source, t.target) if s is not None]
        codes = self.encode(scenes) if scenes else None
        out, i = [], 0
        g = self.grid
        for t in tasks:
            c: dict[str, ImageCodes] = {}
            for name in ("source", "target"):
                if getattr(t, name) is not None:
                    c[name] = ImageCodes(codes[i], g, g)
                    i += 1
            out.append(task_sequence(t, self.prompts, self.tok, c, rng))
        return out

    def mask_sequence(self, seq: Sequence_, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one sequence with one active block noised (see the module docstring)."""
        B = self.block
        P = len(seq.prompt)
        full = seq.prompt + seq.response
        L = -(-len(full) // B) * B
        full = full + [self.tok.special.eos] * (L - len(full))
        b = int(rng.integers(P // B, L // B))
        end = (b + 1) * B
        ids = full[:end]
        labels = [-100] * end
        lo = max(P, b * B)
        t = float(rng.uniform(0.05, 1.0))
        if self.full_mask and seq.kind in FULL_MASK_KINDS and rng.random() < self.full_mask:
            t = 1.0
        pos = np.arange(lo, end)
        hit = rng.random(len(pos)) < t
        if not hit.any():
            hit[int(rng.integers(len(pos)))] = True
        mask_id = self.tok.special.mask
        for p_ in pos[hit]:
            labels[p_] = ids[p_]
            ids[p_] = mask_id
        return ids, labels

    def __call__(self, rng: np.random.Generator, gen: Optional[torch.Generator] = None, step: Optional[int] = None) -> dict:
        seqs = self.sequences(rng, self.batch_size, step)
        rows = [self.mask_sequence(s, rng) for s in seqs]
        L = max(len(r[0]) for r in rows)
        eos = self.tok.special.eos
        ids = torch.full((len(rows), L), eos, dtype=torch.long)
        labels = torch.full((len(rows), L), -100, dtype=torch.long)
        for i, (a, b) in enumerate(rows):
            ids[i, : len(a)] = torch.tensor(a)
            labels[i, : len(b)] = torch.tensor(b)
        # Rows are whole blocks; a shorter row's padding lies in later blocks, which block-causal
        # attention hides from it, so no key-validity mask is needed.
        return {"input_ids": ids, "labels": labels, "mask": AttentionMask.block_causal(L, self.block), "kinds": [s.kind for s in seqs]}


def texts_for_tokenizer(rng: np.random.Generator, n: int) -> list[str]:
    """A corpus of every text the tasks produce (for training the BPE)."""
    from ..generation.prompts import SYSTEM_PROMPTS
    from ..testing import TINY_WORDS

    out: list[str] = []
    for i in range(n):
        t = sample_task(TASKS[i % len(TASKS)], rng)
        out += [t.text, t.answer]
    out += [f"<role>SYSTEM</role> {s} <role>HUMAN</role>" for s in SYSTEM_PROMPTS.values()]
    out += ["<role>ASSISTANT</role>", UNCONDITION, TINY_WORDS, "0 1 2 3 4 5 6 7 8 9"]
    return out

