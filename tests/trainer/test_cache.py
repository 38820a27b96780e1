"""Cache: built once, read with memmaps, keyed by parameters, safe under concurrent builders."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from trainer.data import build_datasets, cache, common


def _all_arrays(datasets):
    return {f"{s}/{m}": np.asarray(d.arrays[m]) for s, d in datasets.items() for m in d.arrays}


def test_second_build_decodes_nothing(vl_root, make_cfg):
    cfg = make_cfg("fairvlmed", vl_root, modalities=("slo", "note"))
    before = common.DECODE_COUNT["npz"]
    first = build_datasets(cfg)
    n_files = sum(1 for _ in vl_root.rglob("data_*.npz"))
    assert common.DECODE_COUNT["npz"] - before == n_files          # each file opened once
    before = common.DECODE_COUNT["npz"]
    second = build_datasets(cfg)
    assert common.DECODE_COUNT["npz"] == before                    # nothing decoded again
    assert isinstance(second["train"].arrays["slo"], np.memmap)
    a, b = _all_arrays(first), _all_arrays(second)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_new_parameters_make_new_entries(vl_root, make_cfg):
    base = make_cfg("fairvlmed", vl_root)
    build_datasets(base)
    before = common.DECODE_COUNT["npz"]
    bigger = build_datasets(base.replace(image_size=16))["train"]
    assert bigger[0]["slo"].shape == (16, 16) and common.DECODE_COUNT["npz"] > before
    before = common.DECODE_COUNT["npz"]
    build_datasets(base.replace(attribute="race"))                 # attribute: same cache
    assert common.DECODE_COUNT["npz"] == before


def test_cache_location_from_environment(vl_lower_root, make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIFAIR_CACHE", str(tmp_path / "envcache"))
    cfg = make_cfg("fairvlmed", vl_lower_root).replace(cache_dir="")
    build_datasets(cfg)
    assert list((tmp_path / "envcache").rglob("slo-*.npy"))


def _worker(cfg, barrier, queue):
    barrier.wait()
    before = common.DECODE_COUNT["npz"]
    ds = build_datasets(cfg)
    arrays = _all_arrays(ds)
    queue.put((common.DECODE_COUNT["npz"] - before,
               {k: (v.shape, v.dtype.str, v.tobytes().__hash__()) for k, v in arrays.items()}))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_concurrent_builders_decode_each_file_once(fv_lower_root, make_cfg):
    cfg = make_cfg("fairvision", fv_lower_root, "race")
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(cfg, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    n_files = sum(1 for _ in fv_lower_root.rglob("data_*.npz"))
    assert results[0][0] + results[1][0] == n_files                # once in all, not once each
    assert results[0][1] == results[1][1]
    assert not list(cache.cache_root(cfg).glob("*.tmp*"))


def test_dataset_pickles_as_memmap_paths(vl_lower_root, make_cfg):
    import pickle

    ds = build_datasets(make_cfg("fairvlmed", vl_lower_root))["val"]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000                                        # paths, not arrays
    back = pickle.loads(blob)
    assert isinstance(back.arrays["slo"], np.memmap)
    assert np.array_equal(back.get_batch([0, 1])["slo"], ds.get_batch([0, 1])["slo"])
