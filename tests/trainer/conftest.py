"""Shared, session-scoped generated datasets (built once) and a config factory."""
from __future__ import annotations

import pytest

from trainer.config import make_config
from trainer.data.synthetic import synthesize


@pytest.fixture(scope="session")
def fv3_root(tmp_path_factory):
    """FairVision, standard folders, int race, three modalities; large enough for AUC checks."""
    return synthesize("fairvision", tmp_path_factory.mktemp("fv3"), n_train=480, n_val=60,
                      n_test=100, seed=3, modalities=("slo", "oct", "note"))


@pytest.fixture(scope="session")
def fv_lower_root(tmp_path_factory):
    """FairVision, lowercase train/val/test, race as strings, SLO + OCT only."""
    return synthesize("fairvision", tmp_path_factory.mktemp("fvl"), n_train=40, n_val=30,
                      n_test=30, seed=2, split_style="lowercase", race_encoding="str")


@pytest.fixture(scope="session")
def vl_root(tmp_path_factory):
    """FairVLMed, Training/Validation/Testing, race as strings, SLO + note."""
    return synthesize("fairvlmed", tmp_path_factory.mktemp("vl"), n_train=60, n_val=40,
                      n_test=40, seed=3, race_encoding="str", test_folder="Testing")


@pytest.fixture(scope="session")
def vl_lower_root(tmp_path_factory):
    """FairVLMed, lowercase folders, int race."""
    return synthesize("fairvlmed", tmp_path_factory.mktemp("vll"), n_train=40, n_val=30,
                      n_test=30, seed=4, split_style="lowercase")


@pytest.fixture
def make_cfg(tmp_path):
    """make_config(..., preset="tiny") with a cache private to the test."""
    def build(dataset, root, attribute="gender", cache_dir=None, **fields):
        return make_config(dataset, attribute, preset="tiny", data_root=str(root),
                           cache_dir=str(cache_dir or tmp_path / "cache"), **fields)
    return build


@pytest.fixture
def small_fv(tmp_path):
    """A fresh, tiny FairVision copy that a test may break."""
    def build(**kw):
        args = dict(n_train=12, n_val=10, n_test=10, seed=5)
        return synthesize("fairvision", tmp_path / "fv", **{**args, **kw})
    return build
