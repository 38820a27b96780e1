"""Prepared shards (trainer/data/shards.py): rows over several memory-mapped files read as one
array, pickled as paths; a folder made for other parameters is refused naming the key."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from trainer.config import make_config
from trainer.data import shards
from trainer.data.common import DataError


@pytest.fixture
def sharded(tmp_path):
    rng = np.random.default_rng(0)
    whole = rng.integers(0, 255, size=(11, 3, 4), dtype=np.uint8)
    files, rows = [], [4, 4, 3]
    for k, (start, n) in enumerate(zip(np.cumsum([0, *rows[:-1]]), rows)):
        files.append(tmp_path / f"s{k}.npy")
        np.save(files[-1], whole[start:start + n])
    return whole, shards.ShardedArray(files, rows, (3, 4), "|u1")


def test_rows_read_like_one_array(sharded):
    whole, arr = sharded
    assert arr.shape == whole.shape and len(arr) == 11 and arr.dtype == np.uint8
    for rows in ([0], [10, 3, 4, 4, 7], np.arange(11)[::-1], [8, 0]):
        assert np.array_equal(arr[rows], whole[rows])
    assert np.array_equal(arr[5], whole[5]) and np.array_equal(np.asarray(arr), whole)
    with pytest.raises(IndexError):
        arr[[11]]


def test_pickles_as_paths(sharded):
    whole, arr = sharded
    blob = pickle.dumps(arr)
    assert len(blob) < 2000
    assert np.array_equal(pickle.loads(blob)[[2, 9]], whole[[2, 9]])


def test_other_parameters_refused(tmp_path):
    cfg = make_config("fairvision", "gender", preset="tiny", data_root="s3://b/x")
    made = {"params": shards.params(cfg, "fairvision")}
    shards.check_params(made, cfg, "fairvision", tmp_path)
    with pytest.raises(DataError, match=r"image_size=.*\(key: image_size\)"):
        shards.check_params(made, cfg.replace(image_size=cfg.image_size * 2), "fairvision", tmp_path)
    (tmp_path / shards.MANIFEST).write_text(json.dumps(made))
    with pytest.raises(DataError, match="no manifest.json"):
        shards.read_manifest(tmp_path / "elsewhere")
    notes = make_config("fairvlmed", "gender", preset="tiny")
    assert shards.params(notes, "fairvlmed")["note_source"] == "note"
    with pytest.raises(DataError, match=r"^note_source gpt4_summary: .*\(key: note_source\)"):
        shards.params(notes.replace(note_source="gpt4_summary"), "fairvlmed")
    made = {"params": shards.params(notes, "fairvlmed")}
    with pytest.raises(DataError, match=r"note_max_length=.*\(key: note_max_length\)"):
        shards.check_params(made, notes.replace(note_max_length=7), "fairvlmed", tmp_path)
