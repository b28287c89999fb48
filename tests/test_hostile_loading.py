"""Hostile inputs to checkpoint and config loading and to the image loader (issue 20, "Loading").

Every case either loads or raises the module's clear error (ConfigError / CheckpointError /
ValueError naming the file, field, value and limit), in bounded time and memory: config sizes are
capped before anything is built, the weights' bytes are checked against memory before anything is
allocated, every tensor of a shard must be in the index, and the image loader survives random,
truncated and bit-flipped files, decompression bombs, odd modes and odd numpy arrays.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from lladauni.model_core.checkpoint import (
    INDEX_NAME,
    CheckpointError,
    device_memory_bytes,
    inspect_checkpoint,
    load_backbone,
    read_safetensors_header,
)
from lladauni.model_core.config import BACKBONE_SIZE_CAPS, BackboneConfig, ConfigError
from lladauni.model_core.decoder.config import DIT_SIZE_CAPS, DiTConfig
from lladauni.model_core.image_config import VISION_SIZE_CAPS, VQ_SIZE_CAPS, ImageTokenizerConfig, PreprocessorConfig
from lladauni.model_core.image_preprocess import MAX_JPEG_SCANS, load_image
from lladauni.tools.cli import main as cli_main

DATA = Path(__file__).parent / "data" / "llada2-uni"
PUBLISHED = json.loads((DATA / "config.json").read_text())
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ helpers
def _view(src: Path, dst: Path) -> Path:
    """dst with a link to every file of the checkpoint src: a test replaces what it damages."""
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).symlink_to(p)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _set_config(ckpt: Path, **changes) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    _replace(ckpt / "config.json", json.dumps(cfg).encode())


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path) -> Path:
    return _view(tiny_ckpt, tmp_path / "ckpt")


def _all_refuse(ckpt: Path, error: type, pattern: str, budget_s: float = 1.0) -> None:
    """Loading and the metadata-only inspection each refuse ckpt with ``error`` matching
    ``pattern`` within ``budget_s`` seconds; the CLI's `inspect-checkpoint --meta` exits 2 (its
    first call spends a second or two importing its commands, so it is not timed)."""
    for call in (lambda: load_backbone(ckpt, device="cpu"), lambda: inspect_checkpoint(ckpt, meta=True)):
        start = time.monotonic()
        with pytest.raises(error, match=pattern):
            call()
        assert time.monotonic() - start < budget_s
    assert cli_main(["inspect-checkpoint", str(ckpt), "--meta"]) == 2


# ------------------------------------------------------------------------------ size caps
def test_a_billion_experts_fails_at_once_for_loading_and_metadata(ckpt, capsys):
    _set_config(ckpt, num_experts=1_000_000_000)
    _all_refuse(ckpt, ConfigError, r"config\.json: num_experts=1000000000: over the sanity limit of 16,384.*LLADAUNI_CONFIG_SIZE_SCALE")
    assert "num_experts=1000000000" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(BACKBONE_SIZE_CAPS))
def test_every_backbone_size_over_its_cap_names_field_value_limit_and_how_to_raise(name):
    cap = BACKBONE_SIZE_CAPS[name]
    with pytest.raises(ConfigError, match=rf"^{name}={cap + 1}: over the sanity limit of {cap:,} .*LLADAUNI_CONFIG_SIZE_SCALE"):
        BackboneConfig.from_dict(dict(PUBLISHED, **{name: cap + 1}))


def test_routed_expert_tensors_are_capped_as_a_product():
    # 1000 MoE layers of 256 experts: each field is under its cap, the 768,000 tensor names are not
    with pytest.raises(ConfigError, match=r"routed expert tensors \(1000 MoE layers x num_experts=256 x 3\)=768000: over the sanity limit of 262,144"):
        BackboneConfig.from_dict(dict(PUBLISHED, num_hidden_layers=1001))


def test_the_scale_environment_variable_raises_every_cap(monkeypatch):
    big = dict(PUBLISHED, num_experts=20_480, n_group=8, num_hidden_layers=3)
    with pytest.raises(ConfigError, match="num_experts=20480"):
        BackboneConfig.from_dict(big)
    monkeypatch.setenv("LLADAUNI_CONFIG_SIZE_SCALE", "2")
    assert BackboneConfig.from_dict(big).num_experts == 20_480
    monkeypatch.setenv("LLADAUNI_CONFIG_SIZE_SCALE", "0.5")
    with pytest.raises(ConfigError, match=r"LLADAUNI_CONFIG_SIZE_SCALE='0.5': expected a number >= 1"):
        BackboneConfig.from_dict(PUBLISHED)


@pytest.mark.parametrize(
    ("cls", "data", "field", "cap"),
    [(DiTConfig, DiTConfig().to_dict(), name, cap) for name, cap in DIT_SIZE_CAPS.items()]
    + [(ImageTokenizerConfig, ImageTokenizerConfig().to_dict(), f"vision_config.{n}", c) for n, c in VISION_SIZE_CAPS.items()]
    + [(ImageTokenizerConfig, ImageTokenizerConfig().to_dict(), f"vq_config.{n}", c) for n, c in VQ_SIZE_CAPS.items()],
)
def test_decoder_and_image_tokenizer_sizes_are_capped(cls, data, field, cap):
    data = copy.deepcopy(data)
    *parents, leaf = field.split(".")
    target = data[parents[0]] if parents else data
    target[leaf] = cap * 4 + 4  # a multiple of the usual divisors, so only the cap can refuse it
    with pytest.raises(ConfigError, match=rf"{leaf}={cap * 4 + 4}: over the sanity limit of {cap:,}"):
        cls.from_dict(data)


def test_preprocessor_fixed_size_and_dit_axes_are_capped():
    with pytest.raises(ConfigError, match=r"fixed_size=65536: over the sanity limit of 8,192"):
        PreprocessorConfig(fixed_size=[65536, 64])
    with pytest.raises(ConfigError, match=r"axes_lens entry=1073741824: over the sanity limit"):
        DiTConfig(axes_lens=[1 << 30, 1024, 1024])


def test_a_huge_decoder_config_fails_at_once(tiny_ckpt, tmp_path):
    from lladauni.model_core.decoder.loading import load_dit

    dec = _view(tiny_ckpt / "decoder", tmp_path / "decoder")
    cfg = json.loads((dec / "config.json").read_text())
    _replace(dec / "config.json", json.dumps(dict(cfg, n_layers=10**9)).encode())
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"n_layers=1000000000: over the sanity limit of 1,024"):
        load_dit(dec)
    assert time.monotonic() - start < 1.0


# ------------------------------------------------------------------------------ memory
def test_weights_larger_than_memory_are_refused_before_allocation(ckpt):
    # within every cap, but 2 x 4,194,304 x 65,536 embedding parameters need 2 TiB at float32
    _set_config(ckpt, hidden_size=65536, vocab_size=1 << 22)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=r"config\.json: [\d,]+ parameters need [\d,.]+ GiB at float32, over the [\d,.]+ GiB limit \(memory of cpu\).*max_param_bytes=.*LLADAUNI_MAX_PARAM_BYTES"):
        load_backbone(ckpt, device="cpu", dtype=torch.float32)
    assert time.monotonic() - start < 5.0


def test_the_memory_limit_is_a_keyword_argument_and_an_environment_variable(tiny_ckpt, monkeypatch):
    with pytest.raises(CheckpointError, match=r"GiB limit \(max_param_bytes\)"):
        load_backbone(tiny_ckpt, device="cpu", max_param_bytes=1000)
    monkeypatch.setenv("LLADAUNI_MAX_PARAM_BYTES", "1000")
    with pytest.raises(CheckpointError, match=r"GiB limit \(LLADAUNI_MAX_PARAM_BYTES\)"):
        load_backbone(tiny_ckpt, device="cpu")
    from lladauni.model_core.decoder.loading import load_dit

    with pytest.raises(CheckpointError, match=r"decoder/config\.json: .*LLADAUNI_MAX_PARAM_BYTES"):
        load_dit(tiny_ckpt / "decoder")
    assert load_backbone(tiny_ckpt, device="cpu", max_param_bytes=1 << 40).config.num_experts == 16


def test_device_memory_is_known_for_the_cpu_and_skipped_for_meta():
    assert device_memory_bytes(torch.device("cpu")) > 2**26
    assert device_memory_bytes(torch.device("meta")) is None


def test_on_cuda_the_limit_is_the_gpus_memory(monkeypatch):
    from types import SimpleNamespace

    from lladauni.model_core.checkpoint import build_meta_backbone, check_fits_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=(10 + i) * 2**30))
    assert device_memory_bytes(torch.device("cuda")) == 10 * 2**30
    model = build_meta_backbone(BackboneConfig.tiny(), torch.bfloat16)
    check_fits_memory(model, torch.device("cuda"), torch.bfloat16, "tiny")  # 22 M parameters fit in 10 GiB
    full = build_meta_backbone(BackboneConfig.full(), torch.bfloat16)
    with pytest.raises(CheckpointError, match=r"published: 16,[\d,]+ parameters need 30\.\d GiB at bfloat16, over the 11\.0 GiB limit \(memory of cuda:1\)"):
        check_fits_memory(full, torch.device("cuda:1"), torch.bfloat16, "published")


# ------------------------------------------------------------------------------ index and shards
def _rewrite_shard(ckpt: Path, fname: str, edit) -> None:
    tensors = load_file(ckpt / fname)
    edit(tensors)
    (ckpt / fname).unlink()
    save_file(tensors, str(ckpt / fname))


def _shard_of(ckpt: Path, name: str) -> str:
    return json.loads((ckpt / INDEX_NAME).read_text())["weight_map"][name]


def test_a_tensor_in_a_shard_but_not_in_the_index_names_tensor_and_shard(ckpt):
    fname = _shard_of(ckpt, "model.norm.weight")
    _rewrite_shard(ckpt, fname, lambda t: t.__setitem__("model.smuggled.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=rf"{fname}: tensor 'model\.smuggled\.weight' is in this file but the index does not list it"):
        load_backbone(ckpt, device="cpu")


def test_a_tensor_in_two_shards_names_the_one_the_index_does_not_point_to(ckpt):
    name = "model.norm.weight"
    home = _shard_of(ckpt, name)
    other = next(f for f in sorted(set(json.loads((ckpt / INDEX_NAME).read_text())["weight_map"].values())) if f != home)
    _rewrite_shard(ckpt, other, lambda t: t.__setitem__(name, torch.ones(64, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=rf"{other}: tensor '{name}' is in this file but the index places it in {home}"):
        load_backbone(ckpt, device="cpu")


def test_a_shard_listed_in_no_index_entry_is_named(ckpt):
    save_file({"x": torch.zeros(2)}, str(ckpt / "model-00009-of-00009.safetensors"))
    _all_refuse(ckpt, CheckpointError, r"model-00009-of-00009\.safetensors: shard listed in no entry of model\.safetensors\.index\.json")


def _with_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with ``edit(header)``; the data stays as it is."""
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    text = edit(header)
    text = text if isinstance(text, bytes) else json.dumps(header).encode()
    _replace(path, struct.pack("<Q", len(text)) + text + raw[8 + hlen :])


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h["model.norm.weight"].__setitem__("shape", ["64"]),
        lambda h: h["model.norm.weight"].__setitem__("shape", [-64]),
        lambda h: h["model.norm.weight"].__setitem__("data_offsets", ["0", "128"]),
        lambda h: h["model.norm.weight"].__setitem__("data_offsets", [0.0, 128.0]),
        lambda h: h["model.norm.weight"].__setitem__("dtype", ["BF16"]),
        lambda h: h["model.norm.weight"].__setitem__("shape", [True] * 64),
        lambda h: b'{"__metadata__": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        lambda h: b'{"a": ' + b"9" * 5000 + b"}",
    ],
    ids=["shape-str", "shape-negative", "offsets-str", "offsets-float", "dtype-list", "shape-bools", "deep", "long-int"],
)
def test_a_corrupt_shard_header_names_the_file(ckpt, edit):
    fname = _shard_of(ckpt, "model.norm.weight")
    _with_header(ckpt / fname, edit)
    with pytest.raises(CheckpointError, match=rf"{fname}: (corrupt safetensors|tensor 'model\.norm\.weight' has)"):
        load_backbone(ckpt, device="cpu")


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=6), cut=st.integers(0, 400))
def test_bit_flipped_or_truncated_safetensors_headers_load_or_say_so(flips, cut):
    raw = bytearray(_SMALL_SAFETENSORS)
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        path.write_bytes(bytes(raw[: len(raw) - cut]))
        try:
            header, start = read_safetensors_header(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            return
    assert all(set(info) >= {"dtype", "shape", "data_offsets"} for info in header.values()) and start >= 8


def _small_safetensors() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"a": torch.ones(3, 4), "b": torch.zeros(5, dtype=torch.bfloat16)}, str(Path(tmp) / "s"))
        return (Path(tmp) / "s").read_bytes()


_SMALL_SAFETENSORS = _small_safetensors()


# ------------------------------------------------------------------------------ corrupt config.json
def _deep(n: int) -> bytes:
    return b'{"extra": ' + b"[" * n + b"]" * n + b"}"


def _published_with(text: str) -> bytes:
    """The published config.json with ``"vocab_size": 173568`` replaced by raw JSON text."""
    return (DATA / "config.json").read_bytes().replace(b'"vocab_size": 173568', b'"vocab_size": ' + text.encode())


BAD_CONFIGS = {
    "not-json": b"{",
    "empty": b"",
    "truncated": (DATA / "config.json").read_bytes()[:400],
    "not-utf8": b'{"vocab_size": "\xff\xfe"}',
    "a-list": b"[1, 2, 3]",
    "nested-100000": _deep(100_000),
    "nested-500": _deep(500),
    "nested-40": _deep(40),
    "string-int": _published_with('"173568"'),
    "float-int": _published_with("173568.0"),
    "bool-int": _published_with("true"),
    "null-int": _published_with("null"),
    "negative": _published_with("-5"),
    "nan": _published_with("NaN"),
    "int-5000-digits": _published_with("9" * 5000),
    "float-overflow": json.dumps(dict(PUBLISHED, rope_theta=10**400)).encode(),
    "nan-float-field": json.dumps(dict(PUBLISHED, initializer_range=float("nan"))).encode(),
    "inf-float-field": json.dumps(dict(PUBLISHED, rope_theta=float("inf"))).encode(),
    "rope-theta-text": json.dumps(dict(PUBLISHED, rope_parameters=dict(PUBLISHED["rope_parameters"], rope_theta="abc"))).encode(),
    "rope-theta-list": json.dumps(dict(PUBLISHED, rope_parameters=dict(PUBLISHED["rope_parameters"], rope_theta=[1]))).encode(),
}


@pytest.mark.parametrize("content", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_a_corrupt_config_json_is_a_config_error_naming_the_file(ckpt, content):
    _replace(ckpt / "config.json", content)
    _all_refuse(ckpt, ConfigError, re.escape(str(ckpt / "config.json")) + ": ")


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "link-loop"])
def test_a_config_json_that_is_not_a_regular_file_is_refused_without_reading(ckpt, kind):
    cfg = ckpt / "config.json"
    cfg.unlink()
    if kind == "directory":
        cfg.mkdir()
    elif kind == "fifo":
        os.mkfifo(cfg)  # reading it would block for ever
    elif kind == "device":
        cfg.symlink_to("/dev/zero")  # reading it would never end
    else:
        cfg.symlink_to(cfg)
    _all_refuse(ckpt, ConfigError, re.escape(str(cfg)) + ": (not a regular file|cannot be read)")


def test_an_index_nested_too_deep_or_not_an_object_is_a_checkpoint_error(ckpt):
    for content, pattern in ((_deep(100_000), "not valid JSON"), (_deep(40), "nested deeper than 32"), (b"[]", "no 'weight_map'")):
        _replace(ckpt / INDEX_NAME, content)
        _all_refuse(ckpt, CheckpointError, re.escape(str(ckpt / INDEX_NAME)) + f": .*{pattern}")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda c: [c], r"expected a JSON object, got list"),
        (lambda c: dict(c, block_out_channels="abcd"), r"block_out_channels='abcd': expected int"),
        (lambda c: dict(c, block_out_channels=[10**9] * 4), r"block_out_channels=1000000000: over the sanity limit of 16,384"),
        (lambda c: dict(c, layers_per_block=True), r"layers_per_block=True: expected int"),
        (lambda c: dict(c, latent_channels=-16), r"latent_channels=-16: must be > 0"),
        (lambda c: dict(c, block_out_channels=[128]), r"block_out_channels=\[128\] does not give a 8x VAE"),
    ],
)
def test_a_bad_vae_config_names_the_file_and_field(tmp_path, change, pattern):
    from lladauni.model_core.decoder.vae import VAEDecoder

    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps(change(copy.deepcopy(_VAE_CONFIG))))
    with pytest.raises(CheckpointError, match=re.escape(str(vae / "config.json")) + ": " + pattern):
        VAEDecoder.from_pretrained(vae)


_VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "in_channels": 3,
    "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "scaling_factor": 0.3611, "shift_factor": 0.1159,
}


# ------------------------------------------------------------------------------ config fuzzing
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2, 3, 8, 16, 1 << 14, (1 << 14) + 1, 1 << 22, 10**9, 2**63, 2**64, -(2**63), 10**400])
    | st.floats()
    | st.text(max_size=8)
)


def _nest(depth: int, kind: type) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value] if kind is list else {"k": value}
    return value


_SHALLOW = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=12)
# deep nesting, as a hostile file would have it
JSON_VALUES = _SHALLOW | st.builds(_nest, st.integers(1, 3000), st.sampled_from([list, dict]))
CONFIGS = {
    "backbone": (BackboneConfig, PUBLISHED),
    "decoder": (DiTConfig, DiTConfig().to_dict()),
    "image_tokenizer": (ImageTokenizerConfig, ImageTokenizerConfig().to_dict()),
    "preprocessor": (PreprocessorConfig, PreprocessorConfig().to_dict()),
}


def _paths(data: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in data.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out.extend(_paths(value, prefix + (key,)))
    return out


def _parses_or_refuses(parse, data, where: str = "") -> None:
    """``parse(data)`` gives a config or a ConfigError (naming ``where``), within a second."""
    start = time.monotonic()
    try:
        parse(data)
    except ConfigError as exc:
        assert where in str(exc)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("which", sorted(CONFIGS))
@FUZZ
@given(draw=st.data())
def test_random_json_values_in_any_field_parse_or_raise_config_error(which, draw):
    cls, published = CONFIGS[which]
    data = copy.deepcopy(published)
    for _ in range(draw.draw(st.integers(1, 3))):
        *parents, leaf = draw.draw(st.sampled_from(_paths(published)))
        target = data
        for key in parents:
            target = target[key] if isinstance(target.get(key), dict) else target.setdefault("_", {})
        target[leaf] = draw.draw(JSON_VALUES)
    _parses_or_refuses(cls.from_dict, data)


@FUZZ
@given(doc=_SHALLOW, raw=st.binary(max_size=64), depth=st.integers(1, 100_000))
def test_random_config_files_parse_or_raise_config_error(doc, raw, depth):
    with tempfile.TemporaryDirectory() as tmp:
        for content in (json.dumps(doc).encode(), raw, b"[" * depth + b"]" * depth, b'{"a": ' * depth + b"1" + b"}" * depth):
            path = Path(tmp) / "config.json"
            path.write_bytes(content)
            for cls, _ in CONFIGS.values():
                _parses_or_refuses(cls.from_json_file, path, str(path))


# ------------------------------------------------------------------------------ image loader
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seed_images() -> list[bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8))
    frames = [rgb.rotate(90 * i) for i in range(3)]
    grey16 = Image.fromarray(np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 131)
    out = [_encode(rgb, fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]
    out += [_encode(rgb.convert("RGBA"), "PNG"), _encode(rgb.convert("RGBA"), "WEBP"), _encode(rgb.convert("LA"), "PNG")]
    out += [_encode(rgb.convert("P"), "PNG", transparency=3), _encode(rgb.convert("1"), "PNG"), _encode(grey16, "PNG")]
    out += [_encode(rgb.convert("CMYK"), "JPEG"), _encode(rgb.convert("CMYK"), "TIFF"), _encode(rgb, "JPEG", progressive=True)]
    out += [_encode(frames[0], "GIF", save_all=True, append_images=frames[1:])]
    out += [_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])]
    return out


SEED_IMAGES = _seed_images()


def _loads_or_refuses(data, **kw) -> str:
    """load_image gives a new RGB image or a ValueError, within two seconds."""
    start = time.monotonic()
    try:
        out = load_image(data, **kw)
    except ValueError as exc:
        assert str(exc)
        result = "refused"
    else:
        assert out.mode == "RGB" and out.width >= 1 and out.height >= 1 and len(out.tobytes()) == 3 * out.width * out.height
        result = "loaded"
    assert time.monotonic() - start < 2.0
    return result


@FUZZ
@given(raw=st.binary(max_size=512) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\0\0\0\0WEBP", b"II*\0"]).flatmap(lambda head: st.binary(max_size=256).map(lambda tail: head + tail)))
def test_random_bytes_load_or_raise_value_error(raw):
    if raw:
        _loads_or_refuses(raw, min_side=1)


@st.composite
def damaged_images(draw) -> bytes:
    """A seed image with up to 8 bytes flipped, perhaps cut short (possibly to nothing)."""
    data = bytearray(SEED_IMAGES[draw(st.sampled_from(range(len(SEED_IMAGES))))])
    for pos, value in draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)):
        data[pos % len(data)] ^= value or 1
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, 10**6)) % len(data)]
    return bytes(data)


DAMAGED = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@DAMAGED
@given(data=damaged_images())
def test_truncated_and_bit_flipped_images_load_or_raise_value_error(data):
    if data:
        _loads_or_refuses(data, min_side=1)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb(fmt: str) -> bytes:
    """A small file whose header declares a huge image."""
    if fmt == "PNG":
        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(4096))) + _png_chunk(b"IEND", b"")
    data = bytearray(_encode(Image.new("RGB", (8, 8)), fmt))
    if fmt == "GIF":
        data[6:10] = struct.pack("<HH", 65535, 65535)
        at = data.index(b"\x2c")
        data[at + 5 : at + 9] = struct.pack("<HH", 65535, 65535)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", 2**31 - 1, 2**31 - 1)
    elif fmt == "JPEG":
        at = data.index(b"\xff\xc0")
        data[at + 5 : at + 9] = struct.pack(">HH", 65500, 65500)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG"])
def test_decompression_bombs_are_refused_from_the_header(fmt):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"decompression bomb"):
        load_image(_bomb(fmt))
    assert time.monotonic() - start < 0.5


def test_an_image_under_pils_limit_but_over_the_cap_is_refused_before_decoding():
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)  # 81 M pixels: under PIL's 89 M, over our 67 M
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    with pytest.raises(ValueError, match=r"9000x9000 = 81,000,000 pixels, over the cap of 67,108,864"):
        load_image(data)


def _jpeg_with_scans(extra: int) -> bytes:
    """A progressive JPEG with its last-but-one scan repeated ``extra`` times."""
    data = _encode(Image.new("L", (64, 64), 100), "JPEG", progressive=True)
    starts = [m.start() for m in re.finditer(b"\xff\xda", data)]
    return data[: starts[-1]] + data[starts[-2] : starts[-1]] * extra + data[starts[-1] :]


def test_a_jpeg_of_many_scans_is_refused_before_decoding():
    assert _loads_or_refuses(_jpeg_with_scans(5)) == "loaded"
    with pytest.raises(ValueError, match=rf"a JPEG with more than {MAX_JPEG_SCANS} scans"):
        load_image(_jpeg_with_scans(MAX_JPEG_SCANS))


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX", "SGI", "JPEG2000"])
def test_formats_outside_the_accepted_list_are_refused(fmt):
    with pytest.raises(ValueError, match=r"not an image PIL can read .*accepted: PNG, JPEG"):
        load_image(_encode(Image.new("RGB", (16, 16)), fmt))


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La", "I;16", "I;16L", "I;16B", "I;16N"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(0, 0), (0, 9), (1, 1), (9, 9)])
def test_every_pil_mode_and_size_loads_as_rgb_or_raises_value_error(mode, size):
    img = Image.new(mode, size)
    _loads_or_refuses(img, min_side=1)
    for fmt in ("PNG", "TIFF", "WEBP", "GIF") if 0 not in size else ():
        try:
            data = _encode(img, fmt)
        except (OSError, ValueError, KeyError):
            continue  # PIL cannot write this mode in this format
        _loads_or_refuses(data, min_side=1)


DTYPES = ["u1", "u2", ">u2", "u4", "u8", "i1", "i2", "i8", "f2", "f4", ">f8", "?", "c8", "O", "U2", "M8[s]", "m8[s]", "V3"]


@FUZZ
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 12), min_size=0, max_size=4),
    fill=st.binary(min_size=0, max_size=64),
    special=st.sampled_from([None, np.nan, np.inf, -1, 2**16, 0.5]),
)
def test_numpy_arrays_of_any_dtype_shape_or_value_load_or_raise_value_error(dtype, shape, fill, special):
    dt = np.dtype(dtype)
    count = int(np.prod(shape)) if shape else 1
    raw = (fill or b"\0") * (count * dt.itemsize // max(1, len(fill or b"\0")) + 1)
    arr = np.frombuffer(raw[: count * dt.itemsize], dtype=np.uint8).copy()
    arr = arr.view(dt).reshape(shape) if dt.kind not in "OU" else np.zeros(shape, dtype=dt)
    if special is not None and arr.size and dt.kind in "fiu":
        with np.errstate(all="ignore"):
            try:
                arr.flat[0] = special
            except (OverflowError, ValueError):
                pass
    _loads_or_refuses(arr, min_side=1)


def test_image_paths_that_are_not_files_say_so(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    cases = {
        str(loop): r"loop\.png: cannot be opened \(Too many levels of symbolic links\)",
        str(tmp_path / ("a" * 300 + ".png")): r"cannot be opened \(File name too long\)",
        str(tmp_path / "a\0b.png"): r"cannot be opened \(embedded null byte\)",
        str(tmp_path / "a\ud800b.png"): r"a\\ud800b\.png: cannot be opened",
        str(tmp_path): r"not a file: ",
        str(fifo): r"not a file: .*fifo\.png",
        "/dev/zero": r"not a file: /dev/zero",
        str(tmp_path / "absent.png"): r"image file not found: ",
    }
    for path, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern) as info:
            load_image(path)
        str(info.value).encode("utf-8")  # printable: no lone surrogate in the message


@DAMAGED
@given(data=damaged_images())
def test_the_servers_image_decoder_answers_every_damaged_image_with_a_4xx(data):
    """tools.runtime.decode_image_bytes (uploads and data URLs): an RGB image or an InputError
    with a 4xx status; it once let PIL's SyntaxError ("broken PNG file") through as a 500."""
    from lladauni.tools.runtime import InputError, Limits, decode_image_bytes

    start = time.monotonic()
    try:
        out = decode_image_bytes(data, Limits())
    except InputError as exc:
        assert 400 <= exc.status < 500 and str(exc).startswith("image: ")
    else:
        assert out.mode == "RGB"
    assert time.monotonic() - start < 2.0
