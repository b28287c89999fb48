"""The SigLIP-VQ image tokenizer (MODEL_SPEC §3): pixels -> one of 16,384 codes per 16x16 patch.

Network, top to bottom (module names are the published tensor names, ``model.visual.*`` and
``model.vqmodel.*``, so the published state dict loads without renaming):

    pixel rows (N, 3*16*16)                         N = sum of gh*gw over the images
      -> patch_embed.proj (a 16x16/16 conv, applied as a linear map on the rows)   (N, D)
      -> + position table (128x128 learned) resampled bilinearly to each image's grid
      -> depth x [x += Attn(LN1(x)); x += MLP(LN2(x))]  attention within each image only,
         exact GELU, LayerNorm eps 1e-6, no final norm                              (N, D)
      -> quant_conv (1x1 conv = linear D -> E)                                      (N, E)
      -> L2-normalise features and codebook, nearest code by squared distance       (N,)

Several images of different sizes go through one forward pass: they are padded to the longest
and attention hides the padding (a block-diagonal mask in effect), so images never see each
other. Images of one size need no mask at all.

``ImageTokenizer`` is the public entry point: it loads the weights once (strictly: every tensor
must be present, expected and of the right shape) and keeps them resident, preprocesses images
for a purpose (``model_core.image_preprocess``), and returns ``ImageTokens``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .checkpoint import (
    CheckpointError,
    check_fits_memory,
    check_weight_files,
    default_dtype,
    fill_weights,
    read_safetensors_header,
    resolve_checkpoint,
)
from .config import ConfigError, read_json
from .image_config import ImageTokenizerConfig, PreprocessorConfig, VisionConfig, VQConfig
from .image_preprocess import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    ImageInput,
    prepare_image,
)
from .layers.attention import AttentionMask, get_attention_backend

__all__ = [
    "ImageTokenizer",
    "ImageTokens",
    "SigLIPVQ",
    "load_image_tokenizer_network",
    "TOKENIZER_DIR",
]

TOKENIZER_DIR = "image_tokenizer"
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
VQ_PRECISIONS = ("model", "float32")


# ----------------------------------------------------------------------------- vision encoder
class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, kernel_size=(p, p), stride=(p, p))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, C*p*p) rows laid out (C, p, p) -> (N, D). A conv whose kernel equals its stride is
        a linear map of each patch row."""
        w = self.proj.weight
        return F.linear(pixel_values.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)


class VisionEmbeddings(nn.Module):
    """The learned (S*S, D) position table, resampled to each image's (gh, gw) grid."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.side = cfg.position_grid
        self.position_embedding = nn.Embedding(self.side * self.side, cfg.hidden_size)
        self._cache: OrderedDict = OrderedDict()

    def for_grid(self, gh: int, gw: int) -> torch.Tensor:
        """(gh*gw, D) in the table's dtype, raster order.

        Patch (r, c) samples the table at x = (c + 0.5) / gw * 2 - 1, y = (r + 0.5) / gh * 2 - 1
        (float32), bilinear, align_corners=False, border padding, as the official encoder does.
        Results are cached per grid until the table is modified.
        """
        table = self.position_embedding.weight
        key = (gh, gw, table.device, table.dtype, table.data_ptr(), table._version)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        d = table.shape[1]
        grid2d = table.detach().view(self.side, self.side, d).permute(2, 0, 1)[None].float()  # (1, D, S, S)
        rows = torch.arange(gh, device=table.device)[:, None].expand(gh, gw).reshape(-1)
        cols = torch.arange(gw, device=table.device)[None, :].expand(gh, gw).reshape(-1)
        x = ((cols + 0.5) / torch.tensor(float(gw), device=table.device)) * 2 - 1  # float32
        y = ((rows + 0.5) / torch.tensor(float(gh), device=table.device)) * 2 - 1
        sample = torch.stack((x, y), dim=-1)[None, :, None, :]  # (1, gh*gw, 1, 2)
        out = F.grid_sample(grid2d, sample, mode="bilinear", align_corners=False, padding_mode="border")
        out = out[0, :, :, 0].t().to(table.dtype).contiguous()  # (gh*gw, D)
        self._cache[key] = out
        while len(self._cache) > 32:
            self._cache.popitem(last=False)
        return out


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.attention_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.attention_bias)
        self.attn_fn = get_attention_backend("auto")

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        out = self.attn_fn(qkv[0], qkv[1], qkv[2], mask, self.scale)  # (B, H, N, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.embeddings = VisionEmbeddings(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))

    def forward(self, pixel_values: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """pixel_values (N, C*p*p) packed image after image -> features (N, D), same packing."""
        lengths = [gh * gw for gh, gw in grids]
        if sum(lengths) != pixel_values.shape[0]:
            raise ValueError(f"grids {list(grids)} cover {sum(lengths)} patches, pixel_values has {pixel_values.shape[0]}")
        x = self.patch_embed(pixel_values)  # (N, D)
        x = x + torch.cat([self.embeddings.for_grid(gh, gw) for gh, gw in grids])
        longest = max(lengths)
        dev = x.device
        if all(n == longest for n in lengths):
            x = x.view(len(lengths), longest, -1)  # (B, L, D): no padding, no mask
            mask = AttentionMask.full(longest, longest, device=dev)
            valid = None
        else:
            valid = torch.arange(longest, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]  # (B, L)
            padded = x.new_zeros(len(lengths), longest, x.shape[-1])  # (B, L, D)
            padded[valid] = x
            x = padded
            # Each image's queries see only its own (valid) keys: block-diagonal attention.
            mask = AttentionMask.full(longest, longest, key_valid=valid, device=dev)
        for blk in self.blocks:
            x = blk(x, mask)
        return x.reshape(-1, x.shape[-1]) if valid is None else x[valid]  # (N, D)


# ----------------------------------------------------------------------------- VQ
class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.num_embeddings, cfg.embed_dim)
        self._cache: Optional[tuple] = None

    def _codebook(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The L2-normalised codebook (K, E) and its squared norms (K,), cached until modified."""
        w = self.embedding.weight
        key = (w.device, w.dtype, w.data_ptr(), w._version, dtype)
        if self._cache is None or self._cache[0] != key:
            e = F.normalize(w.detach().to(dtype), p=2, dim=-1)
            self._cache = (key, e, torch.sum(e**2, dim=1))
        return self._cache[1], self._cache[2]

    def forward(self, z: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """z (N, E) -> codes (N,) int64: argmin of |z|² + |e|² - 2 z·e over normalised vectors,
        computed in z's dtype exactly as the official quantizer does (first index wins ties)."""
        e, e_sq = self._codebook(z.dtype)
        out = []
        for part in z.split(chunk):
            part = F.normalize(part, p=2, dim=-1)
            dist = torch.sum(part**2, dim=1, keepdim=True) + e_sq - 2 * torch.einsum("bd,dn->bn", part, e.t())
            out.append(torch.argmin(dist, dim=1))
        return torch.cat(out) if out else z.new_zeros(0, dtype=torch.long)


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.embed_dim, 1)
        # Stored in the checkpoint (and loaded strictly) but not used to encode.
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.latent_channels, 1)
        self.quantize = VectorQuantizer(cfg)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """quant_conv on (N, D) rows: a 1x1 conv is a linear map per position -> (N, E)."""
        w = self.quant_conv.weight
        return F.linear(features.to(w.dtype), w.reshape(w.shape[0], -1), self.quant_conv.bias)


class _Towers(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig) -> None:
        super().__init__()
        self.visual = VisionEncoder(cfg.vision_config)
        self.vqmodel = VQModel(cfg.vq_config)


class SigLIPVQ(nn.Module):
    """The tokenizer network; ``state_dict()`` keys are the published ``model.visual.*`` /
    ``model.vqmodel.*`` names."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _Towers(config)
        self.vq_precision = "model"

    def set_backends(self, attn: str = "auto", vq_precision: str = "model") -> "SigLIPVQ":
        """attn: an attention backend name (``eager`` is the fp32 reference, ``sdpa`` the default).
        vq_precision: ``model`` computes the nearest code in the weights' dtype, as the official
        code does; ``float32`` upcasts the projected features and codebook first."""
        fn = get_attention_backend(attn)
        if vq_precision not in VQ_PRECISIONS:
            raise ValueError(f"vq_precision={vq_precision!r}: choose one of {list(VQ_PRECISIONS)}")
        for blk in self.model.visual.blocks:
            blk.attn.attn_fn = fn
        self.vq_precision = vq_precision
        return self

    def features(self, pixel_values: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """ViT features (N, D) for packed pixel rows (N, C*p*p)."""
        return self.model.visual(pixel_values, grids)

    def quantize(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N,) int64 codes."""
        z = self.model.vqmodel.project(features)  # (N, E)
        if self.vq_precision == "float32":
            z = z.float()
        return self.model.vqmodel.quantize(z)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Packed pixel rows -> packed raster codes (N,) int64."""
        return self.quantize(self.features(pixel_values, grids))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Random weights with well-spread features and codes (for tests and benchmarks)."""
        for name, p in self.named_parameters():
            if name.endswith("position_embedding.weight"):
                val = torch.randn(p.shape, generator=generator) * 0.5
            elif name.endswith("quantize.embedding.weight"):
                val = torch.randn(p.shape, generator=generator)
            elif ".norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                val = base + torch.randn(p.shape, generator=generator) * 0.1
            elif name.endswith("bias"):
                val = torch.randn(p.shape, generator=generator) * 0.02
            else:
                fan_in = p[0].numel()
                val = torch.randn(p.shape, generator=generator) / fan_in**0.5
            p.copy_(val.to(p.dtype))


# ----------------------------------------------------------------------------- loading
def _weight_files(tok_dir: Path) -> dict[str, str]:
    """tensor name -> file name: from an index if present, else from every *.safetensors file
    except the decoder's ``sigvq_embedding.safetensors``."""
    indexes = sorted(tok_dir.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{tok_dir}: several weight indexes ({[p.name for p in indexes]}); keep one")
    if indexes:
        try:
            wm = read_json(indexes[0])["weight_map"]
        except (ConfigError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{indexes[0]}: not a weight index ({type(exc).__name__}: {exc})") from None
        if not isinstance(wm, dict) or not all(isinstance(v, str) and Path(v).name == v for v in wm.values()):
            raise CheckpointError(f"{indexes[0]}: 'weight_map' must map tensor names to file names in {tok_dir}")
        return wm
    # the decoder's SigVQ embedder may sit beside the tokenizer weights
    from .decoder.sigvq import SIGVQ_SAFETENSORS

    files = sorted(p.name for p in tok_dir.glob("*.safetensors") if p.name != SIGVQ_SAFETENSORS)
    if not files:
        raise CheckpointError(
            f"{tok_dir}: no weights (expected image_tokenizer.safetensors, model.safetensors or an index)"
        )
    out: dict[str, str] = {}
    for fname in files:
        for name in read_safetensors_header(tok_dir / fname)[0]:
            if name in out:
                raise CheckpointError(f"{tok_dir}: tensor {name!r} is in both {out[name]} and {fname}")
            out[name] = fname
    return out


def load_image_tokenizer_network(
    tok_dir: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> SigLIPVQ:
    """Build the network from ``tok_dir/config.json`` and fill it from the safetensors there.

    Strict, unlike the official loader (strict=False): a missing, unexpected, wrongly shaped or
    non-float tensor raises CheckpointError naming the tensor and the file.
    """
    tok_dir = Path(tok_dir)
    try:
        config = ImageTokenizerConfig.from_json_file(tok_dir / CONFIG_NAME)
    except FileNotFoundError:
        raise CheckpointError(f"{tok_dir}: no {CONFIG_NAME}") from None
    weight_map = _weight_files(tok_dir)
    with torch.device("meta"):
        model = SigLIPVQ(config)
    headers = check_weight_files(tok_dir, weight_map, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    check_fits_memory(model, torch.device(device), dtype, str(tok_dir / CONFIG_NAME))
    model = model.to_empty(device=device).to(dtype)
    targets = model.state_dict(keep_vars=True)
    fill_weights(tok_dir, weight_map, headers, lambda name: targets[name].detach())
    return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- public API
@dataclass(frozen=True, eq=False)
class ImageTokens:
    """One encoded image.

    codes: (h * w,) int64 raw codes 0..num_embeddings-1 in raster order (no backbone offset), CPU.
    h, w: the code grid (the image is 16h x 16w pixels).
    image: the resized RGB image that was encoded.
    """

    codes: torch.Tensor
    h: int
    w: int
    image: Image.Image

    @property
    def num_tokens(self) -> int:
        return self.h * self.w

    @property
    def grid_thw(self) -> tuple[int, int, int]:
        return (1, self.h, self.w)


class ImageTokenizer:
    """Images -> SigLIP-VQ codes, with the weights loaded once and kept on ``device``."""

    def __init__(
        self,
        network: SigLIPVQ,
        preprocessor: PreprocessorConfig,
        *,
        image_token_offset: Optional[int] = None,
        vocab_size: Optional[int] = None,
        legacy_crop: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        min_image_side: int = MIN_IMAGE_SIDE,
        max_batch_tokens: int = 16384,
    ) -> None:
        if preprocessor.patch_size != network.config.vision_config.patch_size:
            raise ConfigError(
                f"preprocessor patch_size={preprocessor.patch_size} differs from the encoder's "
                f"vision_config.patch_size={network.config.vision_config.patch_size}"
            )
        num_codes = network.config.vq_config.num_embeddings
        if image_token_offset is not None and vocab_size is not None and vocab_size - image_token_offset != num_codes:
            raise ConfigError(
                f"backbone vocab_size={vocab_size} - image_token_offset={image_token_offset} = "
                f"{vocab_size - image_token_offset} image ids, but the tokenizer has num_embeddings={num_codes}"
            )
        if max_batch_tokens <= 0 or max_image_pixels <= 0:
            raise ValueError(f"max_batch_tokens={max_batch_tokens}, max_image_pixels={max_image_pixels}: must be > 0")
        self.network = network
        self.preprocessor = preprocessor
        self.image_token_offset = image_token_offset
        self.legacy_crop = legacy_crop
        self.max_image_pixels = max_image_pixels
        self.min_image_side = min_image_side
        self.max_batch_tokens = max_batch_tokens

    @property
    def config(self) -> ImageTokenizerConfig:
        return self.network.config

    @property
    def device(self) -> torch.device:
        return self.network.model.vqmodel.quantize.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.model.vqmodel.quantize.embedding.weight.dtype

    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: Optional[torch.dtype] = None,
        attn_backend: str = "auto",
        vq_precision: str = "model",
        revision: Optional[str] = None,
        **kwargs,
    ) -> "ImageTokenizer":
        """Load from a model root holding ``image_tokenizer/`` (and the backbone ``config.json``,
        whose ``image_token_offset`` ``to_backbone_ids`` adds), or from an ``image_tokenizer``
        directory itself (then ``to_backbone_ids`` needs ``image_token_offset=``).

        device defaults to CUDA when available, else CPU; dtype to bf16 on CUDA, fp32 on CPU.
        Other keyword arguments go to ``ImageTokenizer(...)``.
        """
        root = resolve_checkpoint(
            checkpoint_dir, revision=revision, allow_patterns=[CONFIG_NAME, f"{TOKENIZER_DIR}/*"]
        )
        tok_dir = root / TOKENIZER_DIR
        backbone_cfg: Optional[Path] = root / CONFIG_NAME
        if not tok_dir.is_dir():
            if (root / PREPROCESSOR_NAME).is_file():
                tok_dir, backbone_cfg = root, None
            else:
                raise CheckpointError(f"{root}: no {TOKENIZER_DIR}/ directory (the image tokenizer)")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or default_dtype(device)
        try:
            pre = PreprocessorConfig.from_json_file(tok_dir / PREPROCESSOR_NAME)
        except FileNotFoundError:
            raise CheckpointError(f"{tok_dir}: no {PREPROCESSOR_NAME}") from None
        if "image_token_offset" not in kwargs and backbone_cfg is not None and backbone_cfg.is_file():
            kwargs["image_token_offset"], kwargs["vocab_size"] = _read_offset(backbone_cfg)
        network = load_image_tokenizer_network(tok_dir, device=device, dtype=dtype)
        return cls(network.set_backends(attn=attn_backend, vq_precision=vq_precision), pre, **kwargs)

    # ------------------------------------------------------------------ encoding
    def prepare(self, image: ImageInput, purpose: str = "understand", *, multi_image: bool = False):
        """Preprocess one image: (resized RGB image, pixel rows (gh*gw, 3*p*p) float32, (gh, gw))."""
        return prepare_image(
            image, purpose, self.preprocessor, multi_image=multi_image, legacy_crop=self.legacy_crop,
            max_pixels=self.max_image_pixels, min_side=self.min_image_side,
        )

    @torch.no_grad()
    def encode(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        purpose: str = "understand",
        *,
        multi_image: Optional[bool] = None,
    ) -> Union[ImageTokens, list[ImageTokens]]:
        """Encode one image (-> ImageTokens) or a list (-> a list, same order).

        purpose: ``understand`` (smart resize; the several-image budget of 448² applies when a
        list of more than one image is given, or when ``multi_image=True``), ``edit`` (the ~512²
        crop) or ``none`` (no resizing; any grid of whole patches is encoded, as by the official
        encoder, even one the size tokens cannot express: building a prompt for it fails then,
        see ``PromptBuilder.header``). Every image is checked before any is encoded.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            return []
        multi = len(items) > 1 if multi_image is None else multi_image
        prepared = []
        for i, item in enumerate(items):
            try:
                prepared.append(self.prepare(item, purpose, multi_image=multi))
            except ValueError as exc:
                raise ValueError(str(exc) if single else f"image {i}: {exc}") from None
        codes = self._codes([p[1] for p in prepared], [p[2] for p in prepared])
        out = [ImageTokens(c, gh, gw, img) for c, (img, _, (gh, gw)) in zip(codes, prepared)]
        return out[0] if single else out

    def _codes(self, pixels: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Run the network in batches of at most max_batch_tokens patches (similar sizes together)."""
        order = sorted(range(len(grids)), key=lambda i: grids[i][0] * grids[i][1])
        result: list[Optional[torch.Tensor]] = [None] * len(grids)
        batch: list[int] = []

        def flush() -> None:
            if not batch:
                return
            pv = torch.cat([pixels[i] for i in batch]).to(self.device, non_blocking=True)
            codes = self.network(pv, [grids[i] for i in batch]).cpu()
            for i, c in zip(batch, codes.split([grids[i][0] * grids[i][1] for i in batch])):
                result[i] = c
            batch.clear()

        used = 0
        for i in order:
            n = grids[i][0] * grids[i][1]
            if batch and used + n > self.max_batch_tokens:
                flush()
                used = 0
            batch.append(i)
            used += n
        flush()
        return result  # type: ignore[return-value]

    def to_backbone_ids(
        self, tokens: Union[ImageTokens, torch.Tensor, Iterable[ImageTokens]]
    ) -> Union[torch.Tensor, list[torch.Tensor]]:
        """Raw codes -> backbone token ids (code + image_token_offset), int64."""
        if self.image_token_offset is None:
            raise ValueError(
                "image_token_offset is unknown: load from the model root (its config.json has it) or "
                "pass image_token_offset= to ImageTokenizer"
            )
        if isinstance(tokens, ImageTokens):
            codes = tokens.codes
        elif isinstance(tokens, torch.Tensor):
            codes = tokens
        else:
            return [self.to_backbone_ids(t) for t in tokens]  # type: ignore[misc]
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        n = self.config.vq_config.num_embeddings
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= n):
            raise ValueError(f"codes must lie in 0..{n - 1}, got {int(codes.min())}..{int(codes.max())}")
        return codes.long() + self.image_token_offset


def _read_offset(path: Path) -> tuple[int, Optional[int]]:
    data = read_json(path)  # ConfigError naming the file: bad JSON, too large or too deep
    if not isinstance(data, dict) or "image_token_offset" not in data:
        raise ConfigError(f"{path}: no image_token_offset (is this the backbone config.json?)")
    offset, vocab = data["image_token_offset"], data.get("vocab_size")
    for name, v in (("image_token_offset", offset), ("vocab_size", vocab)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"{path}: {name}={v!r}: expected a non-negative integer")
    return offset, vocab
