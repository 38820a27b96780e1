"""The suite's one dataset factory: every generated dataset a test reads is made here.

`dataset(name)` returns the root of a named, session-shared dataset (generated on first use,
then reused by every test and file that names it: read it, never change it); `fresh_dataset(**kw)`
writes a private copy into the test's tmp_path for a test that breaks or writes into its data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

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


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help="after a run that passes, write each xdist group's seconds into "
                          "tests/durations.json (the order `make test` hands the groups out in)")


def pytest_configure(config):
    """In a pytest-xdist worker, torch computes with one thread: two workers share 2 cores with
    each other's Ray trials, and torch's default (a thread per core, spinning while it waits) made
    a 10 s trainer test take 80 s beside a search. Figures that depend on the thread count are
    pinned with one thread anyway (tests/trainer/conftest.py one_thread)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
        config.pluginmanager.register(LongestFirst(), "multifair-longest-first")
    elif config.getoption("record_durations"):
        config.pluginmanager.register(RecordDurations(), "multifair-record-durations")


@pytest.hookimpl(tryfirst=True)   # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    """xdist groups (`--dist loadgroup`): a test using a shared search joins that search's group,
    every other test its file's group (its module fixtures are built once, in one worker, and its
    tests run in order). The group also rides on the test's reports (`user_properties`), to the
    controller under xdist, for `--record-durations`."""
    for item in items:
        group = group_of(item)
        item.add_marker(pytest.mark.xdist_group(group))
        item.user_properties.append(("xdist_group", group))


# --- handing the groups out longest first -------------------------------------------------------
# xdist hands a worker the next group in collection order (`make test` passes
# --no-loadscope-reorder; by default it orders groups by test count). In a worker, where xdist
# collects, the groups are ordered by their seconds in the last recorded run (tests/durations.json,
# written by `make test-durations`), longest first, so no long search is left to run alone at the
# end while the other worker idles. A group not in the table goes first: starting a short group
# early costs little, ending on a long one costs its whole length.
DURATIONS = Path(__file__).with_name("durations.json")


def group_of(item) -> str:
    used = set(getattr(item, "fixturenames", ()))
    return next((name for name in SHARED_SEARCHES if name in used), item.path.stem)


def longest_first(items: list, seconds: dict[str, float]) -> list:
    """The items with their groups longest first; a group not in `seconds` first of all. A group's
    tests keep their order (sorted() is stable)."""
    return sorted(items, key=lambda item: -seconds.get(group_of(item), float("inf")))


class LongestFirst:
    @pytest.hookimpl(trylast=True)    # after pytest's own reordering by fixture parameters
    def pytest_collection_modifyitems(self, items):
        seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
        items[:] = longest_first(items, seconds)


class RecordDurations:
    """`--record-durations`: each group's seconds (setup, call and teardown of its tests, summed
    over the workers' reports) merged into tests/durations.json after a run that passed."""

    def __init__(self, path: Path = DURATIONS):
        self.path = path
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        group = dict(report.user_properties).get("xdist_group")
        if group is not None:
            self.seconds[group] = self.seconds.get(group, 0.0) + report.duration

    def pytest_sessionfinish(self, session, exitstatus):
        if exitstatus != 0 or not self.seconds:
            return
        table = json.loads(self.path.read_text()) if self.path.exists() else {}
        table.update({group: round(s, 1) for group, s in self.seconds.items()})
        self.path.write_text(json.dumps(dict(sorted(table.items(), key=lambda kv: -kv[1])),
                                        indent=1) + "\n")
