"""The suite's own scheduling (tests/conftest.py): under `make test`'s two pytest-xdist workers the
groups are handed out longest first by tests/durations.json, which `make test-durations` writes."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import DURATIONS, SHARED_SEARCHES, RecordDurations, longest_first

ROOT = Path(__file__).resolve().parent.parent


def _item(file: str, name: str, fixtures=()):
    return SimpleNamespace(path=Path(f"/x/{file}.py"), name=name, fixturenames=list(fixtures))


def test_groups_go_longest_first_unknown_first_and_keep_their_tests_in_order():
    items = [_item("test_a", "a1"), _item("test_b", "b1"), _item("test_a", "a2"),
             _item("test_c", "c1"), _item("test_b", "b2", fixtures=("decided",)),
             _item("test_b", "b3")]
    seconds = {"test_a": 5.0, "test_b": 40.0, "decided": 90.0}
    order = [i.name for i in longest_first(items, seconds)]
    # test_c is not in the table: first; then the shared search, test_b's own tests, test_a's
    assert order == ["c1", "b2", "b1", "b3", "a1", "a2"]


def test_recorded_seconds_are_summed_per_group_and_merged_into_the_table(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"test_old": 3.0, "test_a": 100.0}))
    rec = RecordDurations(path)
    # as xdist hands them to the controller: the test's user_properties as lists
    for group, d in [("test_a", 1.25), ("test_a", 2.0), ("decided", 10.0), (None, 7.0)]:
        props = [["xdist_group", group]] if group else []      # None: a report without a group
        rec.pytest_runtest_logreport(SimpleNamespace(user_properties=props, duration=d))
    rec.pytest_sessionfinish(None, exitstatus=1)       # a failed run writes nothing
    assert json.loads(path.read_text()) == {"test_old": 3.0, "test_a": 100.0}
    rec.pytest_sessionfinish(None, exitstatus=0)
    table = json.loads(path.read_text())
    assert table == {"decided": 10.0, "test_a": 3.2, "test_old": 3.0}   # rounded to 0.1 s
    assert list(table) == ["decided", "test_a", "test_old"]            # longest first


def test_the_table_is_well_formed_and_make_test_keeps_its_order():
    table = json.loads(DURATIONS.read_text())
    assert table and all(isinstance(v, (int, float)) and v >= 0 for v in table.values())
    assert set(SHARED_SEARCHES) <= set(table)
    # without --no-loadscope-reorder xdist re-sorts the groups by their number of tests
    xdist = re.search(r"^XDIST := (.*)$", ROOT.joinpath("Makefile").read_text(), re.M).group(1)
    assert "--dist loadgroup" in xdist and "--no-loadscope-reorder" in xdist
