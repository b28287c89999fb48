"""Loading and saving the backbone in the published checkpoint layout.

The published backbone is ``config.json`` + ``model.safetensors.index.json`` + sharded
safetensors with one tensor per expert matrix. We build the model on the meta device, allocate
it once on the target device, and fill it tensor by tensor from memory-mapped shards, so peak
memory stays about one copy of the weights. Routed experts are converted to the stacked layout
by one explicit name map (``ExpertNameMap``), and back at save.

Routed experts may be FP8 (float8_e4m3fn with fp32 ``weight_scale_inv`` per 128 x 128 block, the
published FP8 naming ``experts.N.gate_proj.weight`` + ``experts.N.gate_proj.weight_scale_inv``):
such a checkpoint loads into FP8 storage as it is, a high-precision one is quantized at load
with ``experts="fp8"`` (one tensor at a time), and both save back in the published naming.

Every problem with the files raises ``CheckpointError`` naming the tensor and the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
from safetensors.torch import save_file

from .backbone import LLaDA2Backbone
from .config import BackboneConfig, ConfigError, brief, check_json_depth, read_json
from .expert_storage import dequantize_experts_fp8, offload_experts, quantize_experts_fp8
from .fp8 import FP8_DTYPE, quantize_blockwise_fp8

__all__ = [
    "CheckpointError",
    "ExpertNameMap",
    "EXPERT_MODES",
    "fp8_expert_checkpoint",
    "INDEX_NAME",
    "resolve_checkpoint",
    "read_weight_map",
    "published_shapes",
    "to_published_state_dict",
    "build_meta_backbone",
    "load_backbone",
    "save_backbone",
    "default_dtype",
    "read_safetensors_header",
    "inspect_checkpoint",
    "check_fits_memory",
    "device_memory_bytes",
    "PARAM_BYTES_ENV",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

_ST_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1), "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
}
FLOAT_ST_DTYPES = {"F64", "F32", "F16", "BF16"}
"""The safetensors dtype names of floating-point tensors, the only ones weights may be stored in."""
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not match the model."""


# ---------------------------------------------------------------------------------- name map
class ExpertNameMap:
    """Published per-expert names <-> our stacked expert parameters.

    ``model.layers.L.mlp.experts.E.gate_proj.weight`` (I, H) -> ``...experts.gate_up_proj[E, :I]``
    ``model.layers.L.mlp.experts.E.up_proj.weight``   (I, H) -> ``...experts.gate_up_proj[E, I:]``
    ``model.layers.L.mlp.experts.E.down_proj.weight`` (H, I) -> ``...experts.down_proj[E]``
    FP8 block scales go the same way: ``...experts.E.{gate,up,down}_proj.weight_scale_inv`` ->
    ``...experts.gate_up_scale[E, :nb]`` / ``[E, nb:]`` / ``...experts.down_scale[E]``.
    Every other name is the same on both sides.
    """

    _published = re.compile(
        r"^(?P<prefix>model\.layers\.\d+\.mlp\.experts)\.(?P<expert>\d+)\.(?P<part>gate|up|down)_proj\.(?P<kind>weight|weight_scale_inv)$"
    )
    _stacked = re.compile(r"^(?P<prefix>model\.layers\.\d+\.mlp\.experts)\.(?P<param>(?:gate_up|down)_(?:proj|scale))$")

    @classmethod
    def to_internal(cls, name: str) -> tuple[str, Optional[tuple[int, str]]]:
        """published name -> (internal name, (expert, part) or None)."""
        m = cls._published.match(name)
        if not m:
            return name, None
        part = m["part"]
        param = ("down_" if part == "down" else "gate_up_") + ("proj" if m["kind"] == "weight" else "scale")
        return f"{m['prefix']}.{param}", (int(m["expert"]), part)

    @classmethod
    def is_expert_weight(cls, name: str) -> bool:
        """Whether a published name is a routed expert's weight matrix (not its scale)."""
        m = cls._published.match(name)
        return m is not None and m["kind"] == "weight"

    @classmethod
    def is_expert_scale(cls, name: str) -> bool:
        """Whether a published name is a routed expert's FP8 ``weight_scale_inv``."""
        m = cls._published.match(name)
        return m is not None and m["kind"] == "weight_scale_inv"

    @staticmethod
    def scale_of(internal: str) -> str:
        """The internal name of a stacked expert weight's scales (``gate_up_proj`` -> ``gate_up_scale``)."""
        return internal[: -len("proj")] + "scale"

    @staticmethod
    def slot_view(stacked: torch.Tensor, expert: int, part: str) -> torch.Tensor:
        """The region of a stacked tensor that one published tensor fills."""
        if part == "down":
            return stacked[expert]
        i = stacked.shape[1] // 2
        return stacked[expert, :i] if part == "gate" else stacked[expert, i:]

    @classmethod
    def to_published(cls, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """internal (name, tensor) -> published (name, tensor) pairs (views, no copies)."""
        m = cls._stacked.match(name)
        if not m:
            yield name, tensor
            return
        parts = ("down",) if m["param"].startswith("down") else ("gate", "up")
        kind = "weight" if m["param"].endswith("proj") else "weight_scale_inv"
        for e in range(tensor.shape[0]):
            for part in parts:
                yield f"{m['prefix']}.{e}.{part}_proj.{kind}", cls.slot_view(tensor, e, part)


def fp8_expert_checkpoint(weight_map: dict[str, str]) -> bool:
    """Whether a checkpoint's routed experts are FP8 (it names expert ``weight_scale_inv`` tensors)."""
    return any(ExpertNameMap.is_expert_scale(name) for name in weight_map)


def published_shapes(model: LLaDA2Backbone) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the published layout with its shape (works on the meta device)."""
    out: dict[str, tuple[int, ...]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        for pname, pt in ExpertNameMap.to_published(name, t):
            out[pname] = tuple(pt.shape)
    return out


def to_published_state_dict(model: LLaDA2Backbone) -> dict[str, torch.Tensor]:
    """The model's weights under the published names (contiguous copies of expert slices)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        for pname, pt in ExpertNameMap.to_published(name, t):
            # Expert slices are views of one stacked tensor; safetensors refuses shared storage.
            out[pname] = pt if pname == name else pt.clone()
    return out


# ---------------------------------------------------------------------------------- files
#: The embedded default model: the tiny shapes model trained by ``model_core.training`` and shipped
#: inside the package (published layout, own compact tokenizer). Used when no checkpoint is given.
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "data" / "shapes-tiny"


def default_checkpoint() -> Path:
    """The embedded default checkpoint directory, or CheckpointError when this install lacks it."""
    if not (DEFAULT_CHECKPOINT_DIR / "config.json").is_file():
        raise CheckpointError(
            f"the embedded default model is missing from {DEFAULT_CHECKPOINT_DIR}; rebuild it with "
            f"`python -m lladauni.model_core.training.build` or pass a checkpoint directory"
        )
    return DEFAULT_CHECKPOINT_DIR


def resolve_checkpoint(
    path_or_repo: str | os.PathLike | None = None,
    *,
    revision: Optional[str] = None,
    allow_download: bool = True,
    allow_patterns: Optional[list[str]] = None,
) -> Path:
    """A local checkpoint directory, or a Hugging Face repo id snapshot-downloaded when online.
    None means the embedded default model (:func:`default_checkpoint`)."""
    if path_or_repo is None:
        return default_checkpoint()
    text = os.fspath(path_or_repo)
    p = Path(text).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{p} is a file; pass the checkpoint directory that holds config.json")
    looks_like_repo = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None and not text.startswith((".", "~"))
    if not looks_like_repo:
        raise FileNotFoundError(f"checkpoint directory not found: {p}")
    how_to = (
        f"download it where you have network access (e.g. `huggingface-cli download {text} --local-dir DIR`) "
        f"and pass the local directory instead of the repo id"
    )
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise CheckpointError(f"{text!r} is not a local directory and huggingface_hub is not installed; {how_to}") from None
    offline = bool(getattr(constants, "HF_HUB_OFFLINE", False)) or not allow_download
    try:
        local = snapshot_download(text, revision=revision, allow_patterns=allow_patterns, local_files_only=offline)
    except Exception as exc:  # network errors, missing repo, offline cache miss
        state = "offline mode" if offline else "download failed"
        raise CheckpointError(
            f"{text!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({state}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {how_to}"
        ) from None
    return Path(local)


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """Parse and check a safetensors header: every tensor's bytes must lie inside the file.

    Returns (name -> {"dtype", "shape", "data_offsets"}, byte offset where the data starts;
    tensor offsets count from there). Raises CheckpointError naming the file
    (and tensor) when the file is truncated, its header is corrupt or a tensor is inconsistent.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header (claims {hlen} bytes, file has {size})")
            header_bytes = fh.read(hlen)
    except FileNotFoundError:
        raise CheckpointError(f"weight file missing: {path}") from None
    try:
        header = json.loads(header_bytes)
        check_json_depth(header, "header")
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, 4300+ digit integers, deep nesting
        raise CheckpointError(f"{path}: corrupt safetensors header ({type(exc).__name__}: {brief(str(exc), 200)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_len = size - 8 - hlen
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors entry for tensor {name!r}") from None
        if not (isinstance(shape, list) and all(_is_count(v) for v in shape) and _is_count(start) and _is_count(end)):
            raise CheckpointError(
                f"{path}: corrupt safetensors entry for tensor {name!r} (shape {brief(shape)} and offsets "
                f"{brief([start, end])} must be non-negative integers)"
            )
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {brief(dtype)}")
        expected = math.prod(shape) * _ST_DTYPES[dtype][1]
        if end - start != expected or start < 0:
            raise CheckpointError(f"{path}: tensor {name!r} has inconsistent offsets {start}..{end} for {dtype}{shape}")
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated file: tensor {name!r} needs bytes up to {end} of the data section, "
                f"which has only {data_len}"
            )
    return header, 8 + hlen


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tensor_into(fh, path: Path, name: str, data_start: int, info: dict, dst: torch.Tensor,
                      chunk_bytes: int = 64 * 1024 * 1024) -> None:
    """Copy one tensor's bytes from an open safetensors file straight into ``dst``.

    Same dtype on CPU: read directly into dst's memory (no intermediate copy). Otherwise read
    in chunks of ``chunk_bytes`` and convert while copying, so loading never holds a second
    copy of a large tensor (or of a memory-mapped file) beside the model.
    """
    src_dtype, itemsize = _ST_DTYPES[info["dtype"]]
    start, end = info["data_offsets"]
    numel = (end - start) // itemsize
    if numel != dst.numel() or not dst.is_contiguous():
        raise AssertionError(f"internal: bad destination for {name}")
    if numel == 0:
        return
    fh.seek(data_start + start)
    flat = dst.view(-1)
    if dst.device.type == "cpu" and dst.dtype == src_dtype:
        got = fh.readinto(memoryview(flat.view(torch.uint8).numpy()))
        if got != end - start:
            raise CheckpointError(f"{path}: tensor {name!r} is truncated ({got} of {end - start} bytes)")
        return
    per = max(1, chunk_bytes // itemsize)
    for i in range(0, numel, per):
        count = min(per, numel - i)
        raw = bytearray(count * itemsize)
        got = fh.readinto(raw)
        if got != len(raw):
            raise CheckpointError(f"{path}: tensor {name!r} is truncated")
        flat[i : i + count].copy_(torch.frombuffer(raw, dtype=src_dtype))


def read_weight_map(ckpt_dir: Path) -> dict[str, str]:
    """tensor name -> shard file name, from the index (or a single ``model.safetensors``).

    With an index, every ``*.safetensors`` file of the folder must be one the index names: a shard
    listed in no entry would hold tensors that are never loaded (CheckpointError naming it)."""
    index = ckpt_dir / INDEX_NAME
    if index.is_file():
        try:
            data = read_json(index)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if weight_map is None:
            raise CheckpointError(f"{index}: no 'weight_map' object")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names")
        for name, fname in weight_map.items():
            if Path(fname).name != fname or fname in ("", ".", ".."):
                raise CheckpointError(f"{index}: tensor {name!r} points outside the checkpoint ({brief(fname)})")
        listed = set(weight_map.values())
        unlisted = sorted(p.name for p in ckpt_dir.glob("*.safetensors") if p.name not in listed)
        if unlisted:
            raise CheckpointError(
                f"{ckpt_dir / unlisted[0]}: shard listed in no entry of {INDEX_NAME} (its tensors would never be "
                f"loaded); remove it or add its tensors to the index" + (f" ({len(unlisted)} such files)" if len(unlisted) > 1 else "")
            )
        return weight_map
    single = ckpt_dir / SINGLE_FILE_NAME
    if single.is_file():
        return {name: SINGLE_FILE_NAME for name in read_safetensors_header(single)[0]}
    raise CheckpointError(f"{ckpt_dir}: no {INDEX_NAME} (and no single {SINGLE_FILE_NAME}); is this a backbone checkpoint?")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_meta_backbone(config: BackboneConfig, dtype: torch.dtype = torch.float32, *, fp8_experts: bool = False) -> LLaDA2Backbone:
    """The backbone on the meta device: shapes and names, no memory. ``fp8_experts``: routed
    experts in FP8 storage (float8 weights and their fp32 block scales)."""
    with torch.device("meta"):
        model = LLaDA2Backbone(config)
    model = model.to(dtype)
    return quantize_experts_fp8(model) if fp8_experts else model


def _compare_names(expected: dict[str, tuple], weight_map: dict[str, str], where: Path) -> None:
    missing = sorted(set(expected) - set(weight_map))
    unexpected = sorted(set(weight_map) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected (e.g. {[f'{n} in {weight_map[n]}' for n in unexpected[:5]]})"
            )
        raise CheckpointError(f"{where}: the weights do not match config.json: " + "; ".join(parts))


def check_weight_files(
    root: Path,
    weight_map: dict[str, str],
    expected: dict[str, tuple],
    headers: Optional[dict] = None,
    fp8_names: Optional[Callable[[str], bool]] = None,
) -> dict[str, tuple[dict, int]]:
    """Check a weight map against the model's expected names and shapes before anything is
    allocated: every name present once, in its file, with the expected shape and a float dtype
    (F8_E4M3, and only that, for the names ``fp8_names`` accepts).

    Every tensor a file holds must also be in the weight map, under that file: a tensor present
    in a shard but absent from the index would otherwise be silently ignored.

    Returns file name -> (safetensors header, data start) for ``fill_weights``. Raises
    CheckpointError naming the tensor and the file.
    """
    _compare_names(expected, weight_map, root)
    if headers is None:
        headers = {fname: read_safetensors_header(root / fname) for fname in sorted(set(weight_map.values()))}
    for fname, (header, _) in sorted(headers.items()):
        for name in header:
            if weight_map.get(name) != fname:
                where = f"the index places it in {weight_map[name]}" if name in weight_map else "the index does not list it"
                raise CheckpointError(
                    f"{root / fname}: tensor {name!r} is in this file but {where}; fix the index "
                    f"or remove the tensor from the file"
                )
    for name, fname in weight_map.items():
        header = headers[fname][0]
        if name not in header:
            raise CheckpointError(f"{root / fname}: tensor {name!r} is listed in the index but not in this file")
        got = tuple(header[name]["shape"])
        if got != expected[name]:
            raise CheckpointError(
                f"{root / fname}: tensor {name!r} has shape {list(got)}, the model expects {list(expected[name])}"
            )
        _check_dtype(root / fname, name, header[name]["dtype"], fp8_names is not None and fp8_names(name))
    return headers


def _check_dtype(path: Path, name: str, got: str, fp8: bool) -> None:
    if fp8 and got != "F8_E4M3":
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {got}, but this checkpoint's routed experts are FP8 (it has "
            f"weight_scale_inv tensors): every expert weight must be F8_E4M3"
        )
    if not fp8 and got not in FLOAT_ST_DTYPES:
        only = " (only routed expert weights with a weight_scale_inv may be FP8)" if got.startswith("F8") else ""
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {got}, expected a float type{only}")


def fill_weights(
    root: Path,
    weight_map: dict[str, str],
    headers: dict[str, tuple[dict, int]],
    destination: Callable[[str], torch.Tensor],
    progress: Optional[str] = None,
    after: Optional[Callable[[str, torch.Tensor], None]] = None,
) -> None:
    """Read every tensor of ``weight_map`` straight into ``destination(name)``, file by file in
    on-disk order, then call ``after(name, that tensor)`` when given. ``progress`` names a tqdm
    bar over the files (None: no bar)."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for name, fname in weight_map.items():
        by_file[fname].append(name)
    files: Iterable[str] = sorted(by_file)
    if progress:
        from tqdm import tqdm

        files = tqdm(list(files), desc=progress, unit="file")
    with torch.no_grad():
        for fname in files:
            header, data_start = headers[fname]
            with open(root / fname, "rb") as fh:
                for name in sorted(by_file[fname], key=lambda n: header[n]["data_offsets"][0]):
                    dst = destination(name)
                    read_tensor_into(fh, root / fname, name, data_start, header[name], dst)
                    if after is not None:
                        after(name, dst)


#: Environment variable that replaces the memory limit of ``check_fits_memory`` (bytes).
PARAM_BYTES_ENV = "LLADAUNI_MAX_PARAM_BYTES"


def device_memory_bytes(device: torch.device) -> Optional[int]:
    """Memory a model loaded on ``device`` can use: the GPU's total memory for CUDA; for the CPU,
    physical RAM (``os.sysconf``), or the cgroup's memory.max when that is smaller. None when
    unknown (meta and other devices): no check then."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            return int(torch.cuda.get_device_properties(index).total_memory)
        except (RuntimeError, AssertionError, ValueError):  # no such device: torch says so when loading
            return None
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        cgroup = "max"
    return min(total, int(cgroup)) if cgroup.isdigit() else total


def check_fits_memory(
    model: torch.nn.Module, device: torch.device, dtype: torch.dtype, what: str, max_param_bytes: Optional[int] = None
) -> None:
    """Refuse, before anything is allocated, a model (on the meta device) whose parameters and
    buffers at ``dtype`` (FP8 tensors at one byte) need more bytes than ``max_param_bytes``, else ``LLADAUNI_MAX_PARAM_BYTES``,
    else the memory of ``device`` (``device_memory_bytes``). CheckpointError names the sizes and
    how to raise the limit."""
    limit, source = max_param_bytes, "max_param_bytes"
    if limit is None and os.environ.get(PARAM_BYTES_ENV, "").strip():
        raw = os.environ[PARAM_BYTES_ENV].strip()
        if not raw.isdigit():
            raise CheckpointError(f"{PARAM_BYTES_ENV}={raw!r}: expected a whole number of bytes")
        limit, source = int(raw), PARAM_BYTES_ENV
    if limit is None:
        limit, source = device_memory_bytes(device), f"memory of {device}"
    if limit is None:
        return
    tensors = list(model.state_dict(keep_vars=True).values())
    count = sum(t.numel() for t in tensors)
    size = torch.tensor([], dtype=dtype).element_size()
    need = sum(t.numel() * (t.element_size() if t.dtype == FP8_DTYPE else size) for t in tensors)
    if need > limit:
        raise CheckpointError(
            f"{what}: {count:,} parameters need {need / 2**30:,.1f} GiB at {str(dtype).replace('torch.', '')}, over "
            f"the {limit / 2**30:,.1f} GiB limit ({source}); load in a smaller dtype or on a larger device, or, if the "
            f"memory is really there, raise the limit with max_param_bytes= or {PARAM_BYTES_ENV}=<bytes>"
        )


#: ``load_backbone(experts=...)``: how routed experts are stored once loaded.
EXPERT_MODES = ("auto", "fp8", "dtype")


def load_backbone(
    path_or_repo: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: Optional[torch.dtype] = None,
    attn_backend: str = "auto",
    moe_backend: str = "auto",
    revision: Optional[str] = None,
    progress: bool = False,
    max_param_bytes: Optional[int] = None,
    experts: str = "auto",
    expert_offload: bool = False,
) -> LLaDA2Backbone:
    """Load the published backbone (or a checkpoint in its layout) without trust_remote_code.

    device defaults to CUDA when available, else CPU; dtype to bf16 on CUDA and fp32 on CPU.
    config.json's sizes are checked against hard caps first (``model_core.config``), then the
    weights' bytes at ``dtype`` against ``max_param_bytes`` (default: ``LLADAUNI_MAX_PARAM_BYTES``,
    else the device's memory, see ``check_fits_memory``); both before anything is allocated.

    experts: storage of the routed experts. ``"auto"``: as the checkpoint has them (FP8 when it
    holds F8_E4M3 expert weights with their ``weight_scale_inv``, else ``dtype``); ``"fp8"``:
    block-scaled float8_e4m3fn (a high-precision checkpoint is quantized at load, one tensor at a
    time); ``"dtype"``: in ``dtype`` (an FP8 checkpoint is dequantized at load).
    expert_offload: keep the routed experts in host memory and stream them per layer onto
    ``device`` (``expert_storage.offload_experts``); the weights are read into host memory first,
    and the memory check is then against host memory.
    """
    if experts not in EXPERT_MODES:
        raise ValueError(f"experts={experts!r}: choose one of {list(EXPERT_MODES)}")
    ckpt = resolve_checkpoint(
        path_or_repo, revision=revision, allow_patterns=["config.json", "*.safetensors", INDEX_NAME, "tokenizer*", "special_tokens_map.json"]
    )
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or default_dtype(device)
    try:
        config = BackboneConfig.from_json_file(ckpt / CONFIG_NAME)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: no {CONFIG_NAME}") from None
    weight_map = read_weight_map(ckpt)
    stored_fp8 = fp8_expert_checkpoint(weight_map)
    want_fp8 = experts == "fp8" or (experts == "auto" and stored_fp8)
    load_device = torch.device("cpu") if expert_offload else device
    model = build_meta_backbone(config, dtype, fp8_experts=stored_fp8)
    final = model if want_fp8 == stored_fp8 else build_meta_backbone(config, dtype, fp8_experts=want_fp8)
    check_fits_memory(final, load_device, dtype, str(ckpt / CONFIG_NAME), max_param_bytes)
    fp8_names = ExpertNameMap.is_expert_weight if stored_fp8 else None
    headers = check_weight_files(ckpt, weight_map, published_shapes(model), fp8_names=fp8_names)
    quantize = want_fp8 and not stored_fp8
    model = (final if quantize else model).to_empty(device=load_device)
    _fill_backbone(ckpt, weight_map, headers, model, dtype if quantize else None, progress)
    if stored_fp8 and not want_fp8:
        dequantize_experts_fp8(model, dtype)
    model.eval().requires_grad_(False)
    if expert_offload:
        offload_experts(model, device)
    return model.set_backends(attn=attn_backend, moe=moe_backend)


def _fill_backbone(
    ckpt: Path, weight_map: dict[str, str], headers: dict, model: LLaDA2Backbone, quantize_from: Optional[torch.dtype], progress: bool
) -> None:
    """Read the checkpoint into ``model``. ``quantize_from``: the model's experts are FP8 and the
    checkpoint's are not: each expert tensor is read into a scratch tensor of that dtype and
    quantized into its slot (weights and scales)."""
    targets = model.state_dict(keep_vars=True)
    scratch: dict[tuple[int, ...], torch.Tensor] = {}

    def destination(name: str) -> torch.Tensor:
        internal, slot = ExpertNameMap.to_internal(name)
        dst = targets[internal].detach()
        if slot is None:
            return dst
        view = ExpertNameMap.slot_view(dst, *slot)
        if quantize_from is None:
            return view
        shape = tuple(view.shape)
        if shape not in scratch:
            scratch[shape] = torch.empty(shape, dtype=quantize_from, device=dst.device)
        return scratch[shape]

    def after(name: str, tensor: torch.Tensor) -> None:
        internal, slot = ExpertNameMap.to_internal(name)
        if slot is None or quantize_from is None:
            return
        try:
            q, s = quantize_blockwise_fp8(tensor)
        except ValueError as exc:
            raise CheckpointError(f"{ckpt / weight_map[name]}: tensor {name!r}: {exc}") from None
        ExpertNameMap.slot_view(targets[internal].detach(), *slot).copy_(q)
        ExpertNameMap.slot_view(targets[ExpertNameMap.scale_of(internal)], *slot).copy_(s)

    fill_weights(ckpt, weight_map, headers, destination, progress="loading backbone" if progress else None, after=after)


def save_backbone(
    model: LLaDA2Backbone,
    path: str | os.PathLike,
    *,
    max_shard_bytes: int = 5 * 1024**3,
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write ``config.json``, sharded safetensors under the published names and the index.
    ``dtype`` casts the weights, except FP8 expert weights and their fp32 scales.

    Files are written under temporary names and renamed into place; the index comes last, so an
    interrupted save never looks like a complete checkpoint.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = to_published_state_dict(model)
    if dtype is not None:  # FP8 expert weights and their scales keep their dtypes
        fixed = {k for k, v in tensors.items() if v.dtype == FP8_DTYPE or ExpertNameMap.is_expert_scale(k)}
        tensors = {k: v if k in fixed else v.to(dtype) for k, v in tensors.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        tmp = out / (fname + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / fname)
        weight_map.update({k: fname for k in shard})
    model.config.to_json_file(out / CONFIG_NAME)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    os.replace(tmp, out / INDEX_NAME)
    return out


def inspect_checkpoint(path: str | os.PathLike, *, meta: bool = True, device: str = "cpu") -> dict:
    """Check a checkpoint against its own config.json and report.

    meta=True: build the model on the meta device (no weights read) and match every tensor name
    of the index against it. meta=False: load the real weights (checks shapes, dtypes and file
    integrity too). Returns a JSON-able report with ``ok``; loading problems raise CheckpointError.
    """
    ckpt = resolve_checkpoint(path, allow_download=False)
    try:
        config = BackboneConfig.from_json_file(ckpt / CONFIG_NAME)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: no {CONFIG_NAME}") from None
    weight_map = read_weight_map(ckpt)
    model = build_meta_backbone(config, fp8_experts=fp8_expert_checkpoint(weight_map))
    expected = published_shapes(model)
    missing = sorted(set(expected) - set(weight_map))
    unexpected = sorted(set(weight_map) - set(expected))
    report = {
        "path": str(ckpt),
        "mode": "meta" if meta else "load",
        "layers": config.num_hidden_layers,
        "experts": config.num_experts,
        "vocab_size": config.vocab_size,
        "parameters": model.num_parameters(),
        "active_parameters": model.num_parameters(active=True),
        "tensors_in_index": len(weight_map),
        "tensors_expected": len(expected),
        "matched": len(set(expected) & set(weight_map)),
        "missing": missing,
        "unexpected": unexpected,
        "shards": len(set(weight_map.values())),
    }
    if not meta and not missing and not unexpected:
        loaded = load_backbone(ckpt, device=device, dtype=torch.float32)
        report["loaded_dtype"] = str(next(loaded.parameters()).dtype).replace("torch.", "")
    report["ok"] = not missing and not unexpected
    return report
