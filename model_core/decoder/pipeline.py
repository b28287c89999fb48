"""``ImageDecoder``: image codes -> PIL images (SigVQ -> DiT flow sampling -> VAE).

Loaded once and kept resident (the official code reloads all three models on every call), on
any device (the official code assumes CUDA for its cache clearing), seeded through
``torch.Generator`` objects (the official code uses the global RNG).

    dec = ImageDecoder.from_pretrained("/models/LLaDA2.0-Uni", variant="turbo")
    img = dec.decode(codes, h=32, w=32, seed=0)        # 1024 x 1024 PIL image

``codes`` are the h·w raw code ids (0..16383, raster order, without the backbone's +157184
offset). Output is 32 pixels per code: the grid is upsampled ×2 for the SigVQ features, one
feature per 2×2 DiT patch of the 16-channel latent, which the VAE upsamples 8×.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..checkpoint import CheckpointError, default_dtype
from .compiling import compile_mode, compile_wanted
from .config import DiTConfig
from .dit import ZImageDiT, check_grid
from .loading import load_dit
from .samplers import FlowEulerSampler, FlowRenoiseSampler, ProgressFn, Sampler, draw_noise
from .sigvq import SigVQ, load_sigvq
from .vae import VAEDecoder, pixels_to_pil

__all__ = ["ImageDecoder", "VARIANTS", "default_sampler", "CodesLike", "SeedLike"]

log = logging.getLogger(__name__)

# variant -> folder of its DiT under the model root
VARIANTS = {"normal": "decoder", "turbo": "decoder-turbo"}
IMAGE_TOKEN_OFFSET = 157184

CodesLike = Union[Sequence[int], torch.Tensor, np.ndarray]
SeedLike = Union[int, torch.Generator, None]


def default_sampler(variant: str) -> Sampler:
    """The published sampler of a variant: normal = 50-point Euler ODE, shift 6, CFG 1.0 with
    norm clamp; turbo = 8 re-noising steps, no CFG."""
    if variant == "normal":
        return FlowEulerSampler()
    if variant == "turbo":
        return FlowRenoiseSampler()
    raise ValueError(f"variant={variant!r}: choose 'normal' or 'turbo'")


class ImageDecoder:
    """SigVQ conditioner + Z-Image DiT + sampler + VAE, resident on one device.

    The DiT and SigVQ run in ``dtype`` (bf16 on CUDA, fp32 on CPU by default), as does the VAE.

    ``compile``: run the DiT step and the VAE through ``torch.compile`` (True), eagerly (False),
    or None (auto): the ``LLADAUNI_DECODER_COMPILE`` variable if set, else compiled on CUDA and
    eager elsewhere. ``compile_mode`` (or ``LLADAUNI_DECODER_COMPILE_MODE``) picks the mode,
    ``max-autotune-no-cudagraphs`` by default (see ``model_core.decoder.compiling``). The first
    decode of each grid size compiles; a failed compile warns once and runs eagerly.
    """

    def __init__(
        self,
        sigvq: SigVQ,
        dit: ZImageDiT,
        vae: Optional[VAEDecoder],
        sampler: Sampler,
        *,
        variant: str = "turbo",
        notes: Optional[list[str]] = None,
        compile: Optional[bool] = None,
        compile_mode: Optional[str] = None,
    ) -> None:
        if sigvq.width != dit.config.cap_feat_dim:
            raise ValueError(f"SigVQ width {sigvq.width} != DiT cap_feat_dim {dit.config.cap_feat_dim}")
        if vae is not None and vae.latent_channels != dit.config.in_channels:
            raise ValueError(f"VAE latent_channels {vae.latent_channels} != DiT in_channels {dit.config.in_channels}")
        self.sigvq = sigvq
        self.dit = dit
        self.vae = vae
        self.sampler = sampler
        self.variant = variant
        self.notes = list(notes or [])
        self.set_compile(compile, compile_mode)

    def set_compile(self, compile: Optional[bool] = None, mode: Optional[str] = None) -> None:
        """Switch the DiT and VAE between compiled and eager (see the class docstring)."""
        wanted = compile_wanted(compile, self.device)
        chosen = compile_mode(mode) if wanted else None
        self.dit.set_compile(chosen)
        if self.vae is not None:
            self.vae.set_compile(chosen)

    @property
    def compiled(self) -> bool:
        """True when the DiT runs compiled (asked for, and no fallback to eager so far)."""
        return self.dit.is_compiled

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | Path,
        variant: str = "turbo",
        *,
        device: torch.device | str | None = None,
        dtype: Optional[torch.dtype] = None,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        load_vae: bool = True,
        compile: Optional[bool] = None,
        compile_mode: Optional[str] = None,
    ) -> "ImageDecoder":
        """Load from the model root (holding decoder/, decoder-turbo/, vae/ and
        image_tokenizer/sigvq_embedding.pt). Only the chosen variant's DiT is read.
        ``compile`` / ``compile_mode``: see the class docstring (auto: compiled on CUDA)."""
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}: choose one of {sorted(VARIANTS)}")
        root = Path(checkpoint_dir).expanduser()
        if not root.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {root}")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or default_dtype(device)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype={dtype}: must be a floating-point dtype")
        loaded = load_dit(root / VARIANTS[variant], device=device, dtype=dtype)
        sigvq = load_sigvq(root / "image_tokenizer", device=device, dtype=dtype)
        vae = VAEDecoder.from_pretrained(root / "vae", device=device, dtype=dtype, tiling=vae_tiling, slicing=vae_slicing) if load_vae else None
        return cls(
            sigvq, loaded.model, vae, default_sampler(variant), variant=variant, notes=loaded.notes,
            compile=compile, compile_mode=compile_mode,
        )

    @property
    def device(self) -> torch.device:
        return self.dit.x_pad_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.x_pad_token.dtype

    @property
    def config(self) -> DiTConfig:
        return self.dit.config

    # ------------------------------------------------------------------ inputs
    def _codes_grid(self, codes: CodesLike, h: int, w: int, index: Optional[int] = None) -> torch.Tensor:
        """Validate one item -> (h, w) int64 tensor on the device."""
        where = "" if index is None else f"item {index}: "
        for name, v in (("h", h), ("w", w)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{where}{name}={v!r}: must be a positive integer")
        h, w = int(h), int(w)
        if isinstance(codes, np.ndarray):
            codes = torch.from_numpy(codes)
        elif not isinstance(codes, torch.Tensor):
            seq = list(codes)
            if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in seq):
                bad = next(c for c in seq if not isinstance(c, (int, np.integer)) or isinstance(c, bool))
                raise TypeError(f"{where}codes must be integers; got {type(bad).__name__} {bad!r}")
            codes = torch.tensor(seq, dtype=torch.long)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"{where}codes have dtype {codes.dtype}; expected an integer dtype (code ids)")
        if codes.numel() != h * w:
            raise ValueError(f"{where}{codes.numel()} codes for a {h}x{w} grid (h*w = {h * w})")
        codes = codes.reshape(h, w).to(torch.long)
        vocab = self.sigvq.vocab_size
        bad = (codes < 0) | (codes >= vocab)
        if bool(bad.any()):
            pos = int(bad.flatten().nonzero()[0])
            val = int(codes.flatten()[pos])
            hint = (
                f" (it looks like a backbone token id; subtract {IMAGE_TOKEN_OFFSET})"
                if IMAGE_TOKEN_OFFSET <= val < IMAGE_TOKEN_OFFSET + vocab
                else ""
            )
            raise ValueError(f"{where}code {val} at position {pos} is outside the codebook [0, {vocab}){hint}")
        p = self.config.patch_size
        check_grid(self.config, 2 * p * h, 2 * p * w, 4 * h * w)
        return codes.to(self.device)

    @staticmethod
    def _generator(seed: SeedLike) -> tuple[torch.Generator, int]:
        if isinstance(seed, torch.Generator):
            if seed.device.type != "cpu":
                raise ValueError(f"generator on {seed.device}: noise is drawn on the CPU, pass a CPU torch.Generator")
            return seed, seed.initial_seed()
        g = torch.Generator()
        if seed is None:
            return g, g.seed()  # a fresh non-deterministic seed, not the global RNG
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"seed={seed!r}: expected an int, a torch.Generator or None")
        g.manual_seed(int(seed))
        return g, int(seed)

    def _sampler(self, steps: Optional[int]) -> Sampler:
        if steps is None:
            return self.sampler
        return dataclasses.replace(self.sampler, num_steps=steps)

    @staticmethod
    def _progress(progress: Union[bool, ProgressFn, None], total: int, desc: str) -> tuple[Optional[ProgressFn], Any]:
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, leave=False)
            return (lambda done, _total: bar.update(done - bar.n)), bar
        if progress is False or progress is None:
            return None, None
        if not callable(progress):
            raise TypeError(f"progress={progress!r}: expected a bool or a callable(done, total)")
        return progress, None

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.dit(x.to(self.dtype), t.float(), feats).float()

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def sample_latents(
        self,
        grids: Sequence[torch.Tensor],
        generators: Sequence[torch.Generator],
        *,
        sampler: Optional[Sampler] = None,
        progress: Optional[ProgressFn] = None,
    ) -> torch.Tensor:
        """Validated (h, w) code grids of one size -> DiT latents (B, C, 4h, 4w) at t = 1.

        The initial noise of row i is the first draw of ``generators[i]`` (float32, CPU), the
        re-noising of the turbo sampler the following ones (float64)."""
        sampler = sampler or self.sampler
        h, w = grids[0].shape
        feats = self.sigvq.features(torch.stack(list(grids)))  # (B, 4hw, cap_feat_dim)
        p = self.config.patch_size
        shape = (len(grids), self.config.in_channels, 2 * p * h, 2 * p * w)
        noise = draw_noise(shape, generators, dtype=torch.float32, device=self.device)
        return sampler.sample(self._velocity, noise, feats, generators=generators, progress=progress)

    @torch.no_grad()
    def decode_batch(
        self,
        codes: Sequence[CodesLike],
        sizes: Union[tuple[int, int], Sequence[tuple[int, int]]],
        *,
        steps: Optional[int] = None,
        seeds: Union[SeedLike, Sequence[SeedLike]] = None,
        progress: Union[bool, ProgressFn, None] = None,
    ) -> list[Image.Image]:
        """Decode several code grids; items of equal size share DiT forwards.

        sizes: one (h, w) for all items or one per item. seeds: one per item, or one int s that
        gives item i the seed s + i, or None (fresh seeds). Item i decodes exactly as
        ``decode(codes[i], *sizes[i], seed=seeds[i])`` does (up to batched-matmul rounding).
        Each image's ``info["seed"]`` holds the seed it used.
        """
        n = len(codes)
        if n == 0:
            return []
        if isinstance(sizes, tuple) and len(sizes) == 2 and all(isinstance(v, (int, np.integer)) for v in sizes):
            sizes = [sizes] * n
        if len(sizes) != n:
            raise ValueError(f"{len(sizes)} sizes for {n} code grids")
        if seeds is None or isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
            seeds = [None if seeds is None else int(seeds) + i for i in range(n)]
        elif isinstance(seeds, torch.Generator) or len(seeds) != n:
            raise ValueError(f"seeds: give one per item ({n}), one int, or None")
        grids = [self._codes_grid(c, *hw, index=i if n > 1 else None) for i, (c, hw) in enumerate(zip(codes, sizes))]
        gens = [self._generator(s) for s in seeds]
        sampler = self._sampler(steps)

        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, g in enumerate(grids):
            groups[tuple(g.shape)].append(i)
        total = sampler.model_calls * len(groups)
        report, bar = self._progress(progress, total, f"decoding ({self.variant})")
        out: list[Optional[Image.Image]] = [None] * n
        try:
            for gi, idx in enumerate(groups.values()):
                offset = gi * sampler.model_calls
                step_report = None if report is None else (lambda done, _t, o=offset: report(o + done, total))
                latents = self.sample_latents(
                    [grids[i] for i in idx], [gens[i][0] for i in idx], sampler=sampler, progress=step_report
                )
                for i, img in zip(idx, self._to_images(latents)):
                    img.info["seed"] = gens[i][1]
                    out[i] = img
        finally:
            if bar is not None:
                bar.close()
        return out  # type: ignore[return-value]

    def decode(
        self,
        codes: CodesLike,
        h: int,
        w: int,
        *,
        steps: Optional[int] = None,
        seed: SeedLike = None,
        progress: Union[bool, ProgressFn, None] = None,
    ) -> Image.Image:
        """h·w code ids (raster order; list, 1-D/2-D tensor or array) -> RGB image of 32h x 32w.

        steps: the sampler's ``num_steps`` (normal: grid points, default 50 = 49 DiT calls with
        CFG; turbo: steps, default 8). seed: int, CPU torch.Generator, or None for a fresh seed.
        progress: True for a tqdm bar, or a callable(done, total).
        """
        return self.decode_batch([codes], [(h, w)], steps=steps, seeds=[seed], progress=progress)[0]

    def _to_images(self, latents: torch.Tensor) -> list[Image.Image]:
        if self.vae is None:
            raise RuntimeError("this ImageDecoder was loaded with load_vae=False; use sample_latents()")
        return pixels_to_pil(self.vae.decode(latents))
