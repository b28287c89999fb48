"""The SigVQ conditioner: image codes -> semantic features for the DiT (MODEL_SPEC §6.1).

``prior_token_embedding`` Embedding(16384, 4096) then ``prior_projector`` Linear -> SiLU ->
Linear (keys ``net.0.proj`` and ``net.2``, the layout of diffusers' "linear-silu" FeedForward
that GLM-Image uses). Before it, the (h, w) code grid is upsampled ×2 by nearest neighbour so
that there is one feature per DiT patch (4·h·w features).

Weights live in ``image_tokenizer/sigvq_embedding.pt``, a plain state dict pickled by torch
(fp32, 0.40 GB); it is read with ``torch.load(weights_only=True)``. A safetensors copy with the
same keys (``sigvq_embedding.safetensors``) is accepted too and preferred when both exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError, FLOAT_ST_DTYPES, read_tensor_into, read_safetensors_header

__all__ = ["SigVQ", "load_sigvq", "upsample_codes", "SIGVQ_PT", "SIGVQ_SAFETENSORS", "SIGVQ_KEYS"]

SIGVQ_PT = "sigvq_embedding.pt"
SIGVQ_SAFETENSORS = "sigvq_embedding.safetensors"
SIGVQ_KEYS = (
    "prior_token_embedding.weight",
    "prior_projector.net.0.proj.weight",
    "prior_projector.net.0.proj.bias",
    "prior_projector.net.2.weight",
    "prior_projector.net.2.bias",
)


class _Proj(nn.Module):
    """Holds the first Linear under ``.proj`` (the diffusers key layout)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Projector(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_Proj(dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def upsample_codes(codes: torch.Tensor) -> torch.Tensor:
    """(B, h, w) int codes -> (B, 4hw) raster ids of the nearest ×2 upsampled grid.

    The official code runs this through F.interpolate on a float copy of the ids; float32 holds
    every id below 2^24 exactly, so a plain repeat gives the same ids.
    """
    up = codes.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (B, 2h, 2w)
    return up.flatten(1)


class SigVQ(nn.Module):
    """ids (B, N) -> features (B, N, width). Frozen."""

    def __init__(self, vocab_size: int = 16384, width: int = 4096) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.width = width
        self.prior_token_embedding = nn.Embedding(vocab_size, width)
        self.prior_projector = _Projector(width)
        self.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.prior_projector(self.prior_token_embedding(ids))

    def features(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grids (B, h, w) -> semantic features (B, 4hw, width) for the DiT."""
        return self(upsample_codes(codes))

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        for name, p in self.named_parameters():
            r = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_(r if "embedding" in name else r * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.02))


def _read_state(path: Path) -> dict[str, tuple[torch.Size, Optional[torch.Tensor]]]:
    """name -> (shape, tensor or None when it is read later from safetensors)."""
    if path.suffix == ".safetensors":
        header, _ = read_safetensors_header(path)
        for name, info in header.items():
            if info["dtype"] not in FLOAT_ST_DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']}, expected a float type")
        return {name: (torch.Size(info["shape"]), None) for name, info in header.items()}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"weight file missing: {path}") from None
    except Exception as exc:  # corrupt pickle, or an object weights_only refuses
        raise CheckpointError(f"{path}: cannot be read as a plain state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    for name, t in state.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {t.dtype}, expected a float type")
    return {name: (t.shape, t) for name, t in state.items()}


def load_sigvq(
    image_tokenizer_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SigVQ:
    """Load the SigVQ conditioner from ``image_tokenizer/`` (the .pt, or a safetensors copy).

    The codebook size and width come from the weights; every key must be there with consistent
    shapes, and nothing else (CheckpointError naming the tensor and the file otherwise).
    """
    d = Path(image_tokenizer_dir)
    path = d / SIGVQ_SAFETENSORS if (d / SIGVQ_SAFETENSORS).is_file() else d / SIGVQ_PT
    if not path.is_file():
        raise CheckpointError(f"{d}: no {SIGVQ_PT} (or {SIGVQ_SAFETENSORS}); is this the model's image_tokenizer/ folder?")
    state = _read_state(path)
    missing = [k for k in SIGVQ_KEYS if k not in state]
    unexpected = sorted(set(state) - set(SIGVQ_KEYS))
    if missing or unexpected:
        raise CheckpointError(f"{path}: SigVQ weights do not match: missing {missing}, unexpected {unexpected}")
    emb = state["prior_token_embedding.weight"][0]
    if len(emb) != 2:
        raise CheckpointError(f"{path}: tensor 'prior_token_embedding.weight' has shape {list(emb)}, expected 2-D")
    vocab, width = emb
    with torch.device("meta"):
        model = SigVQ(vocab, width)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for name, want in expected.items():
        if state[name][0] != want:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(state[name][0])}, the model expects {list(want)}")
    model = model.to_empty(device=device).to(dtype)
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        if path.suffix == ".safetensors":
            header, start = read_safetensors_header(path)
            with open(path, "rb") as fh:
                for name in SIGVQ_KEYS:
                    dst = targets[name].detach()
                    read_tensor_into(fh, path, name, start, header[name], dst)
        else:
            for name in SIGVQ_KEYS:
                targets[name].detach().copy_(state[name][1])
    return model.eval()
