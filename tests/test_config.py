from __future__ import annotations

import json

import pytest

from lladauni.model_core import BackboneConfig, ConfigError
from lladauni.model_core.config import PRESETS

from .conftest import DATA

PUBLISHED = json.loads((DATA / "llada2-uni" / "config.json").read_text())


def test_published_round_trip_is_exact(tmp_path):
    cfg = BackboneConfig.from_dict(PUBLISHED)
    assert cfg.to_dict() == PUBLISHED
    assert list(cfg.to_dict()) == list(PUBLISHED)
    cfg.to_json_file(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == PUBLISHED


def test_full_preset_is_the_published_config():
    assert BackboneConfig.full() == BackboneConfig.from_dict(PUBLISHED)
    assert BackboneConfig.preset("full") == BackboneConfig.full()
    with pytest.raises(ValueError, match="unknown preset"):
        BackboneConfig.preset("huge")


def test_unknown_fields_are_kept_and_written_back():
    data = dict(PUBLISHED, some_future_field={"a": 1}, mtp_layers=0)
    cfg = BackboneConfig.from_dict(data)
    assert cfg.extra == {"some_future_field": {"a": 1}, "mtp_layers": 0}
    assert cfg.to_dict() == data


def test_derived_fields():
    c = BackboneConfig.full()
    assert (c.rotary_dim, c.num_kv_groups, c.qkv_size, c.experts_per_group) == (64, 4, 3072, 32)
    assert c.image_vocab_size == 16384 and c.shared_intermediate_size == 512
    assert [c.is_moe_layer(i) for i in range(3)] == [False, True, True]


def test_tiny_preset_keeps_vocabulary_and_ids():
    t = BackboneConfig.tiny()
    assert t.vocab_size == 173568 and t.image_token_offset == 157184 and t.pad_token_id == 156892
    assert (t.hidden_size, t.num_hidden_layers, t.first_k_dense_replace) == (64, 3, 1)
    assert (t.num_experts, t.n_group, t.topk_group, t.num_experts_per_tok, t.num_shared_experts) == (16, 4, 2, 4, 1)
    assert t.partial_rotary_factor == 0.5 and t.rope_parameters["partial_rotary_factor"] == 0.5
    assert set(PRESETS) == {"full", "tiny"}


def test_changed_fields_are_written_even_without_source():
    t = BackboneConfig.tiny()
    again = BackboneConfig.from_dict(t.to_dict())
    assert again == t


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hidden_size": "2048"}, "hidden_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_attention_heads"),
        ({"n_group": 7}, "n_group"),
        ({"topk_group": 9}, "topk_group"),
        ({"num_experts_per_tok": 200}, "num_experts_per_tok"),
        ({"image_token_offset": 173568}, "image_token_offset"),
        ({"pad_token_id": -1}, "pad_token_id"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"sliding_window": 4096}, "sliding_window"),
        ({"model_type": "llama"}, "model_type"),
        ({"use_qk_norm": 1}, "use_qk_norm"),
        ({"first_k_dense_replace": 21}, "first_k_dense_replace"),
        ({"partial_rotary_factor": 0.25}, "partial_rotary_factor"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 600000, "partial_rotary_factor": 0.5}}, "rope_type"),
        ({"rope_theta": 10000}, "rope_theta"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ],
)
def test_invalid_values_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        BackboneConfig.from_dict(dict(PUBLISHED, **change))


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        BackboneConfig.from_json_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BackboneConfig.from_json_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        BackboneConfig.from_json_file(bad)
    bad.write_text(json.dumps(dict(PUBLISHED, num_experts=255)))
    with pytest.raises(ConfigError, match=r"bad\.json: n_group=8: must divide num_experts=255"):
        BackboneConfig.from_json_file(bad)


def test_replace_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown config field"):
        BackboneConfig.tiny().replace(hiden_size=3)
