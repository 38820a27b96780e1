"""The trainer tests' shared datasets (from the suite's one factory, tests/conftest.py) and a
config factory."""
from __future__ import annotations

import pytest
import torch

from trainer.config import make_config


@pytest.fixture(scope="session")
def fv3_root(dataset):
    """FairVision, standard folders, int race, three modalities; large enough for AUC checks."""
    return dataset("fv3")


@pytest.fixture(scope="session")
def fv_lower_root(dataset):
    """FairVision, lowercase train/val/test, race as strings, SLO + OCT only."""
    return dataset("fv_lower")


@pytest.fixture(scope="session")
def vl_root(dataset):
    """FairVLMed, Training/Validation/Testing, race as strings, SLO + note."""
    return dataset("vl")


@pytest.fixture(scope="session")
def vl_lower_root(dataset):
    """FairVLMed, lowercase folders, int race."""
    return dataset("vl_lower")


@pytest.fixture
def make_cfg(tmp_path):
    """make_config(..., preset="tiny") with a cache private to the test."""
    def build(dataset, root, attribute="gender", cache_dir=None, **fields):
        return make_config(dataset, attribute, preset="tiny", data_root=str(root),
                           cache_dir=str(cache_dir or tmp_path / "cache"), **fields)
    return build


@pytest.fixture
def small_fv(fresh_dataset):
    """A fresh, tiny FairVision copy that a test may break."""
    return fresh_dataset


@pytest.fixture
def one_thread():
    """Golden figures: one CPU thread, so no figure depends on how BLAS splits its sums (measured:
    the figures pinned in the tests are the same with 1 and 2 threads, to 1e-7)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
