from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

from lladauni.model_core.testing import make_tiny_checkpoint

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """One tiny random checkpoint in the published layout, shared read-only by the session.

    ``LLADAUNI_TEST_TINY_CKPT`` names one already built (bench/mutation.py builds it once for
    hundreds of runs)."""
    prebuilt = os.environ.get("LLADAUNI_TEST_TINY_CKPT")
    if prebuilt:
        return Path(prebuilt)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture
def tiny_ckpt_copy(tiny_ckpt, tmp_path) -> Path:
    """A private copy that a test may damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, dst)
    return dst


@pytest.fixture(scope="session")
def published_meta(tmp_path_factory) -> Path:
    """The published config.json and weight index (no weights)."""
    out = tmp_path_factory.mktemp("published")
    shutil.copy(DATA / "llada2-uni" / "config.json", out / "config.json")
    (out / "model.safetensors.index.json").write_bytes(
        gzip.decompress((DATA / "llada2-uni" / "model.safetensors.index.json.gz").read_bytes())
    )
    return out


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    """The tiny checkpoint's backbone, one per test module (a module may override it)."""
    from lladauni.model_core import load_backbone

    return load_backbone(tiny_ckpt)


@pytest.fixture(scope="module")
def sampler(model):
    from lladauni.model_core.generation import BlockDiffusionSampler

    from tests.sampler_fixtures import EOS, MASK

    return BlockDiffusionSampler(model, mask_id=MASK, eos_id=EOS)
