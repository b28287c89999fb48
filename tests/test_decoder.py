"""The diffusion decoder: DiT/SigVQ/VAE parity with diffusers, loading, end-to-end decode,
seeds and bad input. Sampler loops are in tests/test_decoder_samplers.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import lladauni.model_core.decoder as dec_pkg
from lladauni.model_core.checkpoint import CheckpointError
from lladauni.model_core.config import ConfigError
from lladauni.model_core.decoder import DiTConfig, ImageDecoder, SigVQ, ZImageDiT, load_dit, load_sigvq
from lladauni.model_core.decoder.dit import rope_positions
from lladauni.model_core.decoder.sigvq import upsample_codes
from lladauni.model_core.decoder.testing import STALE_FILE_FIELDS, write_tiny_decoder
from lladauni.model_core.decoder.vae import VAEDecoder

# max-abs-diff tolerances (fp32 on CPU), in one place
TOL = {"dit": {torch.float32: 2e-5, torch.bfloat16: 2e-2}, "sigvq": 1e-5}

CODES = [5, 16383, 0, 77, 1024, 9000]  # a 2 x 3 grid


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory):
    return write_tiny_decoder(tmp_path_factory.mktemp("tinydec") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def turbo(tiny_decoder_dir):
    return ImageDecoder.from_pretrained(tiny_decoder_dir, "turbo", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def normal(tiny_decoder_dir):
    return ImageDecoder.from_pretrained(tiny_decoder_dir, "normal", device="cpu", dtype=torch.float32)


def _random_dit(config: DiTConfig, seed: int = 0) -> ZImageDiT:
    model = ZImageDiT(config)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("h,w,dtype", [(2, 3, torch.float32), (4, 2, torch.float32), (2, 3, torch.bfloat16)])
def test_dit_matches_diffusers_zimage(h, w, dtype):  # 24 tokens (padded to 32), exactly 32
    """The whole forward coincides with diffusers' ZImageTransformer2DModel once our
    ``semantic_embedder`` is loaded as its ``cap_embedder`` (same RMSNorm + Linear)."""
    from diffusers import ZImageTransformer2DModel

    cfg = DiTConfig.tiny()
    ours = _random_dit(cfg)
    ref_cfg = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_") and k != "extra"}
    ref = ZImageTransformer2DModel(**ref_cfg).eval().to(dtype)
    ours = ours.to(dtype)
    state = {k.replace("semantic_embedder.", "cap_embedder."): v for k, v in ours.state_dict().items()}
    missing, unexpected = ref.load_state_dict(state, strict=True)
    assert not missing and not unexpected

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 4 * h, 4 * w, generator=g).to(dtype)
    feats = torch.randn(2, 4 * h * w, cfg.cap_feat_dim, generator=g).to(dtype)
    t = torch.tensor([0.125, 0.8])
    with torch.no_grad():
        got = ours(x, t, feats)
        want = torch.stack(
            ref(list(x.unsqueeze(2).unbind(0)), t, list(feats.unbind(0)), return_dict=False)[0]
        ).squeeze(2)
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= TOL["dit"][dtype], diff  # measured: 0 (bit-identical) on CPU in both dtypes
    assert want.abs().mean() > 0.05  # not a trivially small output


def test_rope_positions_follow_official_layout():
    img, cap = rope_positions(2, 3, 24)
    assert cap.shape == (32, 3) and cap[:, 0].tolist() == list(range(1, 33)) and cap[:, 1:].abs().sum() == 0
    assert img.shape == (32, 3)
    assert img[:6].tolist() == [[33, 0, 0], [33, 0, 1], [33, 0, 2], [33, 1, 0], [33, 1, 1], [33, 1, 2]]
    assert img[6:].abs().sum() == 0  # image pads sit at (0, 0, 0)


def test_sigvq_matches_diffusers_linear_silu_feedforward():
    from diffusers.models.attention import FeedForward

    sig = SigVQ(16384, 32)
    sig.init_weights(torch.Generator().manual_seed(3))
    ff = FeedForward(32, 32, inner_dim=32, activation_fn="linear-silu")
    emb = torch.nn.Embedding(16384, 32)
    ff.load_state_dict({k.removeprefix("prior_projector."): v for k, v in sig.state_dict().items() if "projector" in k})
    emb.load_state_dict({"weight": sig.prior_token_embedding.weight})
    codes = torch.tensor([[[1, 2, 3], [16383, 0, 42]]])
    ids_ref = F.interpolate(codes[:, None].float(), scale_factor=2, mode="nearest").long().view(1, -1)
    assert torch.equal(upsample_codes(codes), ids_ref)
    with torch.no_grad():
        diff = (sig.features(codes) - ff(emb(ids_ref))).abs().max().item()
    assert diff < TOL["sigvq"]


def test_vae_path_matches_diffusers(tiny_decoder_dir):
    """latent -> PIL equals diffusers' AutoencoderKL.decode with the official pre/post steps
    (÷0.3611 +0.1159, (x+1)/2 clamped, ×255 truncated as torchvision's to_pil_image)."""
    from diffusers import AutoencoderKL

    vae = VAEDecoder.from_pretrained(tiny_decoder_dir / "vae")
    ref = AutoencoderKL.from_pretrained(tiny_decoder_dir / "vae", low_cpu_mem_usage=False).eval()
    assert (vae.scaling_factor, vae.shift_factor) == (0.3611, 0.1159)
    lat = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        px = ((ref.decode(lat / 0.3611 + 0.1159, return_dict=False)[0] + 1) / 2).clamp(0, 1)
    want = (px * 255).byte().permute(0, 2, 3, 1).numpy()
    imgs = vae.to_pil(lat)
    assert [im.size for im in imgs] == [(96, 64)] * 2
    assert np.array_equal(np.stack([np.asarray(im) for im in imgs]), want)
    # Tiled decoding (tiles of 4x4 latents in this tiny VAE) acts only beyond one tile; there
    # it blends tiles, so pixels change (a lot with random weights and 4-latent tiles).
    vae.set_tiling(True)
    small = lat[:, :, :4, :4]
    with torch.no_grad():
        untiled_small = ((ref.decode(small / 0.3611 + 0.1159, return_dict=False)[0] + 1) / 2).clamp(0, 1)
    assert torch.equal(vae.decode(small), untiled_small)
    tiled = vae.decode(lat)
    vae.set_tiling(False)
    assert tiled.shape == px.shape and not torch.equal(tiled, px)


# ---------------------------------------------------------------------------------- loading
def test_tiny_files_have_published_layout(tiny_decoder_dir):
    for folder in ("decoder", "decoder-turbo"):
        cfg = json.loads((tiny_decoder_dir / folder / "config.json").read_text())
        assert cfg["_class_name"] == "ZImageTransformer2DModel"
        assert {k: cfg[k] for k in STALE_FILE_FIELDS} == STALE_FILE_FIELDS
        st = load_file(tiny_decoder_dir / folder / "decoder_model.safetensors")
        assert st["layers.0.attention.to_out.0.weight"].dtype == torch.bfloat16
        assert "semantic_embedder.0.weight" in st and "all_final_layer.2-1.adaLN_modulation.1.weight" in st
    state = torch.load(tiny_decoder_dir / "image_tokenizer" / "sigvq_embedding.pt", weights_only=True)
    assert sorted(state) == sorted(
        ["prior_token_embedding.weight", "prior_projector.net.0.proj.weight", "prior_projector.net.0.proj.bias",
         "prior_projector.net.2.weight", "prior_projector.net.2.bias"]
    )
    assert state["prior_token_embedding.weight"].shape == (16384, 32)


def test_loader_overrides_stale_config_and_says_so(tiny_decoder_dir):
    loaded = load_dit(tiny_decoder_dir / "decoder-turbo")
    assert loaded.config.cap_feat_dim == 32 and loaded.config.axes_lens == [32768, 1024, 1024]
    assert len(loaded.notes) == 2
    assert "cap_feat_dim 2560 is stale" in loaded.notes[0] and "axes_lens [1536, 512, 512] is stale" in loaded.notes[1]
    assert loaded.weights.name == "decoder_model.safetensors"


def test_published_parameter_count():
    with torch.device("meta"):
        assert ZImageDiT(DiTConfig.full()).num_parameters() == 6_160_808_512
        assert sum(p.numel() for p in SigVQ().parameters()) == 100_671_488


def test_loader_accepts_official_file_name_and_rejects_bad_weights(tiny_decoder_dir, tmp_path):
    d = tmp_path / "decoder"
    shutil.copytree(tiny_decoder_dir / "decoder", d)
    ref = load_dit(d).model.state_dict()
    (d / "decoder_model.safetensors").rename(d / "model.safetensors")
    loaded = load_dit(d)
    assert loaded.weights.name == "model.safetensors"
    assert all(torch.equal(ref[k], v) for k, v in loaded.model.state_dict().items())

    st = load_file(d / "model.safetensors")
    del st["layers.1.feed_forward.w3.weight"]
    save_file(st, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing.*layers\.1\.feed_forward\.w3\.weight"):
        load_dit(d)
    st["layers.1.feed_forward.w3.weight"] = torch.zeros(3, 3)
    save_file(st, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layers\.1\.feed_forward\.w3\.weight.*shape \[3, 3\]"):
        load_dit(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no decoder_model.safetensors or model.safetensors"):
        load_dit(d)


def test_sigvq_loader_checks_keys_and_accepts_safetensors(tiny_decoder_dir, tmp_path):
    d = tmp_path / "image_tokenizer"
    shutil.copytree(tiny_decoder_dir / "image_tokenizer", d)
    ref = load_sigvq(d)
    state = torch.load(d / "sigvq_embedding.pt", weights_only=True)
    save_file(state, d / "sigvq_embedding.safetensors")
    (d / "sigvq_embedding.pt").unlink()
    got = load_sigvq(d)
    assert all(torch.equal(ref.state_dict()[k], v) for k, v in got.state_dict().items())
    (d / "sigvq_embedding.safetensors").unlink()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, d / "sigvq_embedding.pt")
    with pytest.raises(CheckpointError, match=r"unexpected \['extra.weight'\]"):
        load_sigvq(d)
    (d / "sigvq_embedding.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="sigvq_embedding.pt: cannot be read"):
        load_sigvq(d)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"axes_dims=\[8, 12, 10\] sums to 30"):
        DiTConfig.tiny().replace(axes_dims=[8, 12, 10])
    with pytest.raises(ConfigError, match="n_kv_heads=1"):
        DiTConfig.tiny().replace(n_kv_heads=1)
    with pytest.raises(ConfigError, match="siglip_feat_dim=8"):
        DiTConfig.tiny().replace(siglip_feat_dim=8)
    with pytest.raises(ConfigError, match=r"all_patch_size=\[4\]"):
        DiTConfig.tiny().replace(all_patch_size=[4])


# ---------------------------------------------------------------------------------- decode
def test_decode_size_seed_and_global_rng_independence(turbo):
    torch.manual_seed(123)
    a = turbo.decode(CODES, 2, 3, seed=7)
    torch.manual_seed(456)
    _ = torch.randn(1000)
    b = turbo.decode(torch.tensor(CODES).view(2, 3), 2, 3, seed=7)
    c = turbo.decode(np.array(CODES), 2, 3, seed=8)
    assert a.size == (96, 64) and a.mode == "RGB" and a.info["seed"] == 7
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    state = torch.random.get_rng_state()
    turbo.decode(CODES, 2, 3, seed=None)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_decode_batch_equals_single_decodes(normal):
    items = [CODES, list(range(4)), CODES[::-1]]
    sizes = [(2, 3), (2, 2), (3, 2)]
    batch = normal.decode_batch(items, sizes, seeds=[1, 2, 3], steps=4)
    for img, c, hw, s in zip(batch, items, sizes, [1, 2, 3]):
        single = normal.decode(c, *hw, seed=s, steps=4)
        diff = np.abs(np.asarray(img, dtype=int) - np.asarray(single, dtype=int)).max()
        assert diff <= 1  # batched matmuls may round differently; truncation to uint8 can flip one level


def test_progress_callback_counts_model_calls(turbo, normal):
    seen = []
    turbo.decode(CODES, 2, 3, seed=0, steps=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    seen.clear()
    normal.decode(CODES, 2, 3, seed=0, steps=3, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "codes,h,w,exc,match",
    [
        ([0, 1, 2, 16384], 2, 2, ValueError, r"code 16384 at position 3 is outside the codebook \[0, 16384\)"),
        ([0, -1, 2, 3], 2, 2, ValueError, "code -1 at position 1"),
        ([157184 + 9, 1, 2, 3], 2, 2, ValueError, "looks like a backbone token id; subtract 157184"),
        ([0, 1, 2], 2, 2, ValueError, r"3 codes for a 2x2 grid \(h\*w = 4\)"),
        (torch.zeros(4), 2, 2, TypeError, "dtype torch.float32; expected an integer dtype"),
        (torch.zeros(4, dtype=torch.bool), 2, 2, TypeError, "dtype torch.bool"),
        ([0.0, 1.0, 2.0, 3.0], 2, 2, TypeError, "codes must be integers; got float"),
        ([0] * 4, 0, 4, ValueError, "h=0: must be a positive integer"),
        ([0] * 513, 513, 1, ValueError, r"grid of 1026x2 DiT tokens .* axes_lens=\[32768, 1024, 1024\]"),
        ([0] * (91 * 91), 91, 91, ValueError, r"RoPE positions up to \(33153"),
    ],
)
def test_bad_input_gives_clear_errors(turbo, codes, h, w, exc, match):
    with pytest.raises(exc, match=match):
        turbo.decode(codes, h, w, seed=0)


def test_bad_options(tiny_decoder_dir, turbo):
    with pytest.raises(ValueError, match="variant='fast'"):
        ImageDecoder.from_pretrained(tiny_decoder_dir, "fast")
    with pytest.raises(ValueError, match="num_steps=0"):
        turbo.decode(CODES, 2, 3, steps=0)
    with pytest.raises(TypeError, match="seed='1'"):
        turbo.decode(CODES, 2, 3, seed="1")
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        ImageDecoder.from_pretrained(tiny_decoder_dir / "nope")


# ---------------------------------------------------------------------------------- surface
def test_decoder_surface_and_lazy_diffusers():
    assert dec_pkg.__all__ == [
        "DiTConfig", "FlowEulerSampler", "FlowRenoiseSampler", "ImageDecoder", "LoadedDiT", "NoGuidance",
        "NormClampedCFG", "SigVQ", "VAEDecoder", "ZImageDiT", "default_sampler", "load_dit", "load_sigvq", "save_dit",
    ]
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'diffusers', 'transformers', 'accelerate'}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import lladauni.model_core.decoder, lladauni.model_core.decoder.testing
        from lladauni.model_core.decoder import ImageDecoder, ZImageDiT, DiTConfig
        print('ok')
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
