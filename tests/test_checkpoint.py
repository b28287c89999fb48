from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from lladauni.model_core import CheckpointError, load_backbone, resolve_checkpoint, save_backbone
from lladauni.model_core.checkpoint import INDEX_NAME, ExpertNameMap, inspect_checkpoint, published_shapes, to_published_state_dict


def _index(ckpt):
    return json.loads((ckpt / INDEX_NAME).read_text())


def _write_index(ckpt, data):
    (ckpt / INDEX_NAME).write_text(json.dumps(data))


def test_tiny_checkpoint_has_the_published_layout(tiny_ckpt):
    idx = _index(tiny_ckpt)["weight_map"]
    files = set(idx.values())
    assert len(files) >= 2 and all(f.startswith("model-") and f.endswith(".safetensors") for f in files)
    assert "model.layers.1.mlp.experts.15.up_proj.weight" in idx
    assert "model.layers.2.mlp.gate.expert_bias" in idx and "model.layers.0.mlp.gate_proj.weight" in idx
    assert not any("gate_up_proj" in n for n in idx)
    sd = {}
    for f in files:
        sd.update(load_file(tiny_ckpt / f))
    assert sd["model.word_embeddings.weight"].dtype == torch.bfloat16
    assert tuple(sd["model.layers.1.mlp.experts.3.gate_proj.weight"].shape) == (32, 64)
    assert tuple(sd["model.layers.1.mlp.experts.3.down_proj.weight"].shape) == (64, 32)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tiny_ckpt / name).is_file()


def test_tiny_checkpoint_is_deterministic(tmp_path):
    from lladauni.model_core.testing import make_tiny_checkpoint

    a = make_tiny_checkpoint(tmp_path / "a", seed=5, with_image_tokenizer=False, with_decoder=False)
    b = make_tiny_checkpoint(tmp_path / "b", seed=5, with_image_tokenizer=False, with_decoder=False)
    c = make_tiny_checkpoint(tmp_path / "c", seed=6, with_image_tokenizer=False, with_decoder=False)
    f = sorted(p.name for p in a.glob("*.safetensors"))[0]
    assert (a / f).read_bytes() == (b / f).read_bytes() != (c / f).read_bytes()


def test_name_map_round_trip(tiny_ckpt):
    model = load_backbone(tiny_ckpt)
    pub = to_published_state_dict(model)
    assert set(pub) == set(_index(tiny_ckpt)["weight_map"])
    # published -> stacked -> published is the identity
    rebuilt = {k: torch.empty_like(v) for k, v in model.state_dict().items()}
    for name, t in pub.items():
        internal, slot = ExpertNameMap.to_internal(name)
        dst = rebuilt[internal] if slot is None else ExpertNameMap.slot_view(rebuilt[internal], *slot)
        dst.copy_(t)
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt[k], v), k
    gu = model.model.layers[1].mlp.experts.gate_up_proj
    assert torch.equal(gu[7, :32], pub["model.layers.1.mlp.experts.7.gate_proj.weight"])
    assert torch.equal(gu[7, 32:], pub["model.layers.1.mlp.experts.7.up_proj.weight"])


def test_save_load_round_trip(tiny_ckpt, tmp_path):
    model = load_backbone(tiny_ckpt)
    out = save_backbone(model, tmp_path / "saved", max_shard_bytes=10_000_000)
    assert len({*_index(out)["weight_map"].values()}) > 2
    again = load_backbone(out)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_ckpt / "config.json").read_text())
    assert not list(out.glob("*.tmp"))
    ids = torch.randint(0, 173568, (1, 20))
    torch.testing.assert_close(model(ids).logits, again(ids).logits, rtol=0, atol=0)


def test_published_index_matches_model_on_meta(published_meta):
    report = inspect_checkpoint(published_meta, meta=True)
    assert report["ok"] and report["matched"] == report["tensors_in_index"] == 14_813
    assert report["shards"] == 13 and not report["missing"] and not report["unexpected"]


# ---------------------------------------------------------------------------------- errors
def test_missing_index(tiny_ckpt_copy):
    (tiny_ckpt_copy / INDEX_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors\.index\.json"):
        load_backbone(tiny_ckpt_copy)


def test_corrupt_index(tiny_ckpt_copy):
    (tiny_ckpt_copy / INDEX_NAME).write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_backbone(tiny_ckpt_copy)
    _write_index(tiny_ckpt_copy, {"metadata": {}})
    with pytest.raises(CheckpointError, match="weight_map"):
        load_backbone(tiny_ckpt_copy)


def test_index_pointing_outside(tiny_ckpt_copy):
    idx = _index(tiny_ckpt_copy)
    idx["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors"
    _write_index(tiny_ckpt_copy, idx)
    with pytest.raises(CheckpointError, match="points outside"):
        load_backbone(tiny_ckpt_copy)


def test_missing_config(tiny_ckpt_copy):
    (tiny_ckpt_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_backbone(tiny_ckpt_copy)


def test_missing_tensor_names_it(tiny_ckpt_copy):
    idx = _index(tiny_ckpt_copy)
    del idx["weight_map"]["model.layers.2.mlp.experts.9.down_proj.weight"]
    _write_index(tiny_ckpt_copy, idx)
    with pytest.raises(CheckpointError, match=r"1 missing.*model\.layers\.2\.mlp\.experts\.9\.down_proj\.weight"):
        load_backbone(tiny_ckpt_copy)


def test_unexpected_tensor_names_it_and_its_file(tiny_ckpt_copy):
    idx = _index(tiny_ckpt_copy)
    idx["weight_map"]["model.layers.3.mlp.gate.weight"] = "model-00001-of-00003.safetensors"
    _write_index(tiny_ckpt_copy, idx)
    with pytest.raises(CheckpointError, match=r"1 unexpected.*model\.layers\.3\.mlp\.gate\.weight in model-00001"):
        load_backbone(tiny_ckpt_copy)


def _rewrite_shard(ckpt, name, fn):
    idx = _index(ckpt)["weight_map"]
    fname = idx[name]
    sd = load_file(ckpt / fname)
    fn(sd)
    save_file(sd, str(ckpt / fname))
    return fname


def test_wrong_shape_names_tensor_and_file(tiny_ckpt_copy):
    name = "model.layers.1.attention.dense.weight"
    fname = _rewrite_shard(tiny_ckpt_copy, name, lambda sd: sd.__setitem__(name, torch.zeros(64, 63)))
    with pytest.raises(CheckpointError, match=rf"{fname}: tensor '{name}' has shape \[64, 63\], the model expects \[64, 128\]"):
        load_backbone(tiny_ckpt_copy)


def test_tensor_listed_but_absent_from_file(tiny_ckpt_copy):
    name = "model.norm.weight"
    fname = _rewrite_shard(tiny_ckpt_copy, name, lambda sd: sd.pop(name))
    with pytest.raises(CheckpointError, match=rf"{fname}: tensor '{name}' is listed in the index but not in this file"):
        load_backbone(tiny_ckpt_copy)


def test_integer_tensor_rejected(tiny_ckpt_copy):
    name = "model.norm.weight"
    _rewrite_shard(tiny_ckpt_copy, name, lambda sd: sd.__setitem__(name, torch.ones(64, dtype=torch.int32)))
    with pytest.raises(CheckpointError, match="dtype I32"):
        load_backbone(tiny_ckpt_copy)


def test_truncated_shard_names_file_and_tensor(tiny_ckpt_copy):
    shard = sorted(tiny_ckpt_copy.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated file: tensor '.+'"):
        load_backbone(tiny_ckpt_copy)


def test_corrupt_header_names_file(tiny_ckpt_copy):
    shard = sorted(tiny_ckpt_copy.glob("model-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[10:20] = b"\xff" * 10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt safetensors header"):
        load_backbone(tiny_ckpt_copy)
    shard.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated safetensors file"):
        load_backbone(tiny_ckpt_copy)
    shard.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt or truncated safetensors header"):
        load_backbone(tiny_ckpt_copy)


def test_missing_shard_file(tiny_ckpt_copy):
    shard = sorted(tiny_ckpt_copy.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"weight file missing: .*{shard.name}"):
        load_backbone(tiny_ckpt_copy)


def test_single_file_checkpoint_without_index(tiny_ckpt, tmp_path):
    model = load_backbone(tiny_ckpt)
    out = save_backbone(model, tmp_path / "one")
    assert len(list(out.glob("model-*.safetensors"))) == 1
    (out / INDEX_NAME).unlink()
    os.replace(next(out.glob("model-*.safetensors")), out / "model.safetensors")
    again = load_backbone(out)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_resolve_local_and_repo_ids(tmp_path, tiny_ckpt):
    assert resolve_checkpoint(tiny_ckpt) == tiny_ckpt
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        resolve_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(tiny_ckpt / "config.json")
    with pytest.raises(CheckpointError, match="pass the local directory"):
        resolve_checkpoint("nobody-here/LLaDA2.0-Uni-missing", allow_download=False)


def test_published_shapes_on_meta(published_meta):
    from lladauni.model_core import BackboneConfig
    from lladauni.model_core.checkpoint import build_meta_backbone

    shapes = published_shapes(build_meta_backbone(BackboneConfig.full()))
    assert shapes["model.layers.5.mlp.experts.255.gate_proj.weight"] == (512, 2048)
    assert shapes["model.layers.0.attention.query_key_value.weight"] == (3072, 2048)
    assert shapes["model.word_embeddings.weight"] == (173568, 2048)
    assert shapes["model.layers.19.mlp.gate.expert_bias"] == (256,)


def test_dtype_conversion_paths(tmp_path):
    """fp32 files into bf16 and fp32 models; bf16 files read straight into a bf16 model."""
    from lladauni.model_core.testing import make_tiny_checkpoint

    ck32 = make_tiny_checkpoint(tmp_path / "f32", seed=2, dtype=torch.float32, with_image_tokenizer=False, with_decoder=False)
    m32 = load_backbone(ck32, dtype=torch.float32)
    m16 = load_backbone(ck32, dtype=torch.bfloat16)
    for (k, a), (_, b) in zip(m32.state_dict().items(), m16.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), k


def test_chunked_read_matches(tiny_ckpt):
    from lladauni.model_core.checkpoint import read_safetensors_header, read_tensor_into as _read_tensor_into

    f = sorted(tiny_ckpt.glob("model-*.safetensors"))[0]
    header, start = read_safetensors_header(f)
    name = max(header, key=lambda n: header[n]["data_offsets"][1] - header[n]["data_offsets"][0])
    ref = load_file(f)[name]
    for chunk in (100, 4096, 1 << 30):
        dst = torch.empty(ref.shape, dtype=torch.float32)
        with open(f, "rb") as fh:
            _read_tensor_into(fh, f, name, start, header[name], dst, chunk_bytes=chunk)
        assert torch.equal(dst, ref.float())
