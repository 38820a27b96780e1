"""The suite's one dataset factory: every generated dataset a test reads is made here.

`dataset(name)` returns the root of a named, session-shared dataset (generated on first use,
then reused by every test and file that names it: read it, never change it); `fresh_dataset(**kw)`
writes a private copy into the test's tmp_path for a test that breaks or writes into its data.
"""
from __future__ import annotations

import os

import pytest

# name -> synthesize() arguments. Sizes are the smallest each group of tests checks numbers on.
DATASETS = {
    # tests/trainer
    "fv3": dict(layout="fairvision", n_train=480, n_val=60, n_test=100, seed=3,
                modalities=("slo", "oct", "note")),            # large enough for AUC checks
    "fv_lower": dict(layout="fairvision", n_train=40, n_val=30, n_test=30, seed=2,
                     split_style="lowercase", race_encoding="str"),
    "vl": dict(layout="fairvlmed", n_train=60, n_val=40, n_test=40, seed=3, race_encoding="str",
               test_folder="Testing"),
    "vl_lower": dict(layout="fairvlmed", n_train=40, n_val=30, n_test=30, seed=4,
                     split_style="lowercase"),
    "vl_fit": dict(layout="fairvlmed", n_train=96, n_val=64, n_test=64, seed=1,
                   test_folder="Testing"),
    "loop": dict(layout="fairvision", n_train=192, n_val=96, n_test=96, seed=3,
                 modalities=("slo", "oct", "note")),
    "checkpoint": dict(layout="fairvision", n_train=96, n_val=48, n_test=48, seed=4),
    "methods": dict(layout="fairvision", n_train=48, n_val=32, n_test=32, seed=4),
    "guards": dict(layout="fairvision", n_train=24, n_val=16, n_test=16, seed=1),
    # only the OCT carries the label; the SLO is rendered from a decoy label
    "oct_only": dict(layout="fairvision", n_train=96, n_val=48, n_test=64, seed=2,
                     informative=("oct",)),
    "oct_only_test200": dict(layout="fairvision", n_train=96, n_val=48, n_test=200, seed=3,
                             informative=("oct",)),
    # tests/search: the one dataset of the search session
    "search": dict(layout="fairvision", n_train=96, n_val=48, n_test=48, seed=0),
}
FRESH = dict(layout="fairvision", n_train=12, n_val=10, n_test=10, seed=5)


def generate(folder, layout: str, **kw):
    from trainer.data.synthetic import synthesize

    return synthesize(layout, folder / layout, **kw)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """dataset(name) -> root of the named shared dataset (DATASETS), generated once."""
    built = {}

    def get(name: str):
        if name not in built:
            built[name] = generate(tmp_path_factory.mktemp(name), **DATASETS[name])
        return built[name]
    return get


@pytest.fixture
def fresh_dataset(tmp_path):
    """fresh_dataset(**synthesize arguments) -> a private dataset under tmp_path (default: a tiny
    FairVision), for a test that breaks or writes into its data."""
    count = iter(range(1_000))

    def make(**kw):
        return generate(tmp_path / f"data{next(count)}", **{**FRESH, **kw})
    return make


# Session fixtures that run a whole search: every test using one runs in the same pytest-xdist
# worker (`make test` runs two), so the search runs once, not once per worker.
SHARED_SEARCHES = ("decided", "study")


def pytest_configure(config):
    """In a pytest-xdist worker, torch computes with one thread: two workers share 2 cores with
    each other's Ray trials, and torch's default (a thread per core, spinning while it waits) made
    a 10 s trainer test take 80 s beside a search. Figures that depend on the thread count are
    pinned with one thread anyway (tests/trainer/conftest.py one_thread)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    """xdist groups (`--dist loadgroup`): a test using a shared search joins that search's group,
    every other test its file's group (its module fixtures are built once, in one worker, and its
    tests run in order). xdist hands out the groups largest first (most tests), which interleaves
    the many-test trainer files with the searches: measured 16:26 for the suite, against 19:35
    with the searches' tests handed out one by one (two searches at once on 2 cores)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        group = next((name for name in SHARED_SEARCHES if name in used), item.path.stem)
        item.add_marker(pytest.mark.xdist_group(group))
