"""Loading the DiT of ``decoder/`` or ``decoder-turbo/`` in the published layout.

The hub ships ``decoder_model.safetensors`` while the official loader opens
``model.safetensors`` (MODEL_SPEC §7); we accept both and prefer the published name. The
config file is stale in two fields (§12); the loader builds what the weights need and records
each override in ``LoadedDiT.notes`` (also logged at INFO level):

* ``cap_feat_dim``: the semantic embedder's input width, read from the weights (4096 published);
* ``axes_lens``: [32768, 1024, 1024], what the official loader forces (RoPE has no weights).

The model is built on the meta device and filled tensor by tensor from the file, so loading
holds about one copy of the weights. Problems raise ``CheckpointError`` naming tensor and file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import CheckpointError, check_fits_memory, check_weight_files, fill_weights, read_safetensors_header
from ..config import ConfigError
from .config import OFFICIAL_AXES_LENS, DiTConfig
from .dit import ZImageDiT

__all__ = ["DIT_WEIGHT_NAMES", "LoadedDiT", "find_dit_weights", "load_dit", "save_dit"]

log = logging.getLogger(__name__)

DIT_WEIGHT_NAMES = ("decoder_model.safetensors", "model.safetensors")
CONFIG_NAME = "config.json"


@dataclass
class LoadedDiT:
    model: ZImageDiT
    config: DiTConfig
    weights: Path
    notes: list[str] = field(default_factory=list)


def find_dit_weights(decoder_dir: Path) -> Path:
    """The weight file of a decoder folder: decoder_model.safetensors, else model.safetensors."""
    for name in DIT_WEIGHT_NAMES:
        if (decoder_dir / name).is_file():
            return decoder_dir / name
    raise CheckpointError(f"{decoder_dir}: no {' or '.join(DIT_WEIGHT_NAMES)}")


def load_dit(
    decoder_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedDiT:
    """Load the Z-Image DiT of one decoder folder (config.json + weights)."""
    d = Path(decoder_dir)
    if not d.is_dir():
        raise CheckpointError(f"decoder folder not found: {d}")
    weights = find_dit_weights(d)
    try:
        file_cfg = DiTConfig.from_json_file(d / CONFIG_NAME)
    except FileNotFoundError:
        raise CheckpointError(f"{d}: no {CONFIG_NAME}") from None
    header, data_start = read_safetensors_header(weights)

    notes: list[str] = []
    emb = header.get("semantic_embedder.1.weight")
    if emb is None or len(emb["shape"]) != 2:
        raise CheckpointError(f"{weights}: tensor 'semantic_embedder.1.weight' is missing or not 2-D")
    cap_feat_dim = emb["shape"][1]
    if cap_feat_dim != file_cfg.cap_feat_dim:
        notes.append(
            f"{d / CONFIG_NAME}: cap_feat_dim {file_cfg.cap_feat_dim} is stale; the weights' semantic embedder "
            f"takes {cap_feat_dim} features, so the model is built with cap_feat_dim={cap_feat_dim}"
        )
    if file_cfg.axes_lens != OFFICIAL_AXES_LENS:
        notes.append(
            f"{d / CONFIG_NAME}: axes_lens {file_cfg.axes_lens} is stale; using {OFFICIAL_AXES_LENS} as the official loader does"
        )
    try:
        config = file_cfg.replace(cap_feat_dim=cap_feat_dim, axes_lens=list(OFFICIAL_AXES_LENS))
    except ConfigError as exc:
        raise CheckpointError(f"{weights}: {exc}") from None
    for note in notes:
        log.info(note)

    with torch.device("meta"):
        model = ZImageDiT(config)
    model = model.to(dtype)
    check_fits_memory(model, torch.device(device), dtype, str(d / CONFIG_NAME))
    weight_map = {name: weights.name for name in header}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    headers = check_weight_files(d, weight_map, expected, headers={weights.name: (header, data_start)})
    model = model.to_empty(device=device)
    targets = model.state_dict(keep_vars=True)
    fill_weights(d, weight_map, headers, lambda name: targets[name].detach())
    model.eval().requires_grad_(False)
    return LoadedDiT(model, config, weights, notes)


def save_dit(
    model: ZImageDiT,
    decoder_dir: str | Path,
    *,
    dtype: Optional[torch.dtype] = torch.bfloat16,
    file_config: Optional[dict] = None,
    weights_name: str = DIT_WEIGHT_NAMES[0],
) -> Path:
    """Write ``config.json`` (``file_config`` if given, e.g. with the published stale values,
    else the model's) and the weights under the published names."""
    from safetensors.torch import save_file

    out = Path(decoder_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / weights_name), metadata={"format": "pt"})
    cfg = DiTConfig.from_dict(file_config) if file_config is not None else model.config
    cfg.to_json_file(out / CONFIG_NAME)
    return out
