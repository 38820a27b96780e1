"""Missing modalities in the data (issue 22): presence read from which npz keys exist, zeros (never
data) in absent rows, batch["present"] always, the refusals and drops, the card's counts, the
prepared shards' presence, and the generator's --missing rates. Expected values are computed here
from the npz files with numpy, never from the loader."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from trainer.data import DataError, audit_dataset, build_datasets, prepare, shards
from trainer.data.cache import preprocess_file
from trainer.data.common import SPLITS
from trainer.data.transforms import preprocess_slo

FOLDERS = {"train": "Training", "val": "Validation", "test": "Test"}
KEYS = {"slo": "slo_fundus", "oct": "oct_bscans"}


def _files(root, split):
    return sorted((root / "Glaucoma" / FOLDERS[split]).glob("data_*.npz"))


def _drop(path, *keys):
    data = dict(np.load(path))
    for k in keys:
        data.pop(k)
    np.savez(path, **data)


def _has(path, key) -> bool:
    with np.load(path) as z:
        return key in z.files


@pytest.fixture
def holes(small_fv):
    """Tiny FairVision with SLO removed from files 0, 3, 5 and OCT from 1, 3 of every split
    (file 3 has neither), written by deleting the npz keys."""
    root = small_fv()
    for split in SPLITS:
        files = _files(root, split)
        for i in (0, 3, 5):
            _drop(files[i], "slo_fundus")
        for i in (1, 3):
            _drop(files[i], "oct_bscans")
    return root


def _expected(root, split, drop_none=True):
    """Presence per modality, read with numpy, of the files the loader keeps (gender is known in
    every generated FairVision file; files without any chosen modality are dropped)."""
    files = _files(root, split)
    has = {m: np.array([_has(f, k) for f in files]) for m, k in KEYS.items()}
    keep = has["slo"] | has["oct"] if drop_none else np.ones(len(files), bool)
    return files, keep, {m: h[keep] for m, h in has.items()}


def test_presence_equals_the_absent_keys_and_absent_rows_are_zeros(holes, make_cfg):
    cfg = make_cfg("fairvision", holes)
    with pytest.warns(UserWarning, match=r"split 'train': 1 sample\(s\) have none of the "
                                         r"modalities slo,oct: dropped"):
        datasets = build_datasets(cfg)
    for split, ds in datasets.items():
        files, keep, want = _expected(holes, split)
        assert len(ds) == int(keep.sum()) == len(files) - 1
        batch = ds.get_batch(np.arange(len(ds)))
        for m in KEYS:
            got = batch["present"][m]
            assert got.dtype == torch.bool and got.tolist() == want[m].tolist()
            assert ds.present[m].tolist() == want[m].tolist()
            assert not batch[m][~got].any()            # absent rows: zeros, never another image
            assert batch[m][got].flatten(1).any(1).all()
        kept = [f for f, k in zip(files, keep) if k]
        for j in np.flatnonzero(want["slo"])[:2]:       # a present row is that file's own image
            image = np.load(kept[j])["slo_fundus"]
            assert np.array_equal(batch["slo"][j].numpy(), preprocess_slo(image, cfg.image_size))
        item = ds[int(np.flatnonzero(~want["slo"])[0])]
        assert item["present"]["slo"].item() is False and item["present"]["oct"].item() is True
        loader = torch.utils.data.DataLoader(ds, batch_size=4)
        assert next(iter(loader))["present"]["slo"].tolist() == want["slo"][:4].tolist()


def test_complete_data_carries_all_true_presence(vl_root, make_cfg):
    ds = build_datasets(make_cfg("fairvlmed", vl_root))["val"]
    batch = ds.get_batch([0, 1, 2])
    assert set(batch["present"]) == {"slo", "note"}
    assert all(p.dtype == torch.bool and p.all() and p.shape == (3,)
               for p in batch["present"].values())
    assert set(ds[0]["present"]) == {"slo", "note"}


def test_modality_absent_in_every_sample_of_a_split_is_refused(small_fv, make_cfg):
    root = small_fv()
    for f in _files(root, "val"):
        _drop(f, "oct_bscans")
    with pytest.raises(DataError, match=r"Validation: split 'val' has no sample with modality "
                                        r"'oct' \(key 'oct_bscans' absent in every file\); "
                                        r"choose --modalities without it"):
        build_datasets(make_cfg("fairvision", root))
    ds = build_datasets(make_cfg("fairvision", root, modalities=("slo",), mode="baseline"))
    assert ds["val"].get_batch([0])["present"] == {"slo": torch.tensor([True])}


def test_samples_without_any_chosen_modality_are_dropped_and_counted(holes, make_cfg):
    with pytest.warns(UserWarning, match=r"split 'val': 1 sample\(s\) have none"):
        summary = prepare(make_cfg("fairvision", holes))
    for split in SPLITS:
        files, keep, want = _expected(holes, split)
        part = summary["splits"][split]
        assert part["dropped_no_modality"] == int((~keep).sum()) == 1
        assert part["missing"] == {m: int((~w).sum()) for m, w in want.items()}
    # one modality chosen: the files lacking it are dropped, 3 per split
    with pytest.warns(UserWarning, match=r"split 'test': 3 sample\(s\) have none of the "
                                         r"modalities slo: dropped"):
        ds = build_datasets(make_cfg("fairvision", holes, modalities=("slo",), mode="baseline"))
    assert all(d.present["slo"].all() for d in ds.values())


def test_present_but_corrupt_image_is_still_refused(holes, make_cfg):
    bad = _files(holes, "test")[2]
    data = dict(np.load(bad))
    data["oct_bscans"] = np.full((4, 8, 8), np.nan, np.float32)
    np.savez(bad, **data)
    with pytest.raises(DataError, match=rf"{bad.name}: key 'oct_bscans' has 256 of 256 values NaN"):
        build_datasets(make_cfg("fairvision", holes))


def test_card_counts_missing_per_split_and_group_by_hand(holes, make_cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = audit_dataset(make_cfg("fairvision", holes))["card"]
    for split in SPLITS:
        files = _files(holes, split)
        male = np.array([int(np.load(f)["male"]) for f in files])
        race = np.array([int(np.load(f)["race"]) for f in files])
        missing = card["splits"][split]["missing"]
        for m, key in KEYS.items():
            absent = np.array([not _has(f, key) for f in files])
            assert missing[m]["n"] == int(absent.sum())
            gender = missing[m]["attributes"]["gender"]
            assert (gender["female"], gender["male"]) == (int((absent & (male == 0)).sum()),
                                                          int((absent & (male == 1)).sum()))
            by_race = missing[m]["attributes"]["race"]
            assert [by_race[g] for g in ("asian", "black", "white")] == [
                int((absent & (race == c)).sum()) for c in range(3)]


def test_complete_card_says_none_missing(fv_lower_root, make_cfg, capsys):
    from trainer.__main__ import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = audit_dataset(make_cfg("fairvision", fv_lower_root))["card"]
        assert all(card["splits"][s]["missing"] == {} for s in SPLITS)
        cache = make_cfg("fairvision", fv_lower_root).cache_dir
        argv = ["audit", "--dataset", "fairvision", "--data-root", str(fv_lower_root),
                "--preset", "tiny", "--set", f"cache_dir={cache}", "--attribute", "gender"]
        assert main(argv) == 0
    assert "missing modalities: none" in capsys.readouterr().out


def test_blank_note_is_missing_and_its_tokens_are_zeros(vl_lower_root, make_cfg, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(vl_lower_root, root)
    files = sorted((root / "train").glob("data_*.npz"))
    for f, text in zip(files[:3], ("", "   \n", None)):
        data = dict(np.load(f))
        if text is None:
            data.pop("note")
        else:
            data["note"] = np.array(text)
        np.savez(f, **data)
    ds = build_datasets(make_cfg("fairvlmed", root))["train"]
    batch = ds.get_batch(np.arange(len(ds)))
    want = [True] * len(files)
    want[:3] = [False] * 3
    assert batch["present"]["note"].tolist() == want and batch["present"]["slo"].all()
    note = batch["note"]
    assert not note["input_ids"][:3].any() and not note["attention_mask"][:3].any()
    assert batch["note"]["attention_mask"][3:].sum(1).min() > 0
    # the CSV's summaries: a blank one is missing too
    csv = root / "data_summary.csv"
    import pandas as pd
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.loc[table["filename"] == files[5].name, "gpt4_summary"] = " "
    table.to_csv(csv, index=False)
    ds = build_datasets(make_cfg("fairvlmed", root, note_source="gpt4_summary"))["train"]
    assert np.flatnonzero(~ds.present["note"]).tolist() == [5]


# ----------------------------------------------------------------------------- prepared shards

def _write_prepared(cfg, root, out, with_presence=True):
    """A prepared folder made as search/dataprep.py makes one (per-file cache.preprocess_file,
    shards.small_parts), without Ray: one shard per split."""
    from trainer.data import LAYOUTS

    layout, mods = LAYOUTS["fairvision"], list(cfg.resolved_modalities())
    manifest = {"version": shards.FORMAT_VERSION, "params": shards.params(cfg, "fairvision"),
                "splits": {}}
    for split in SPLITS:
        files = _files(root, split)
        rows = [preprocess_file(cfg, layout, f, ["meta", *mods]) for f in files]
        parts, meta = {}, {}
        for m in mods:
            array = np.stack([r[m] for r in rows])
            name = shards.shard_name(split, 0, m)
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(shards.npy_bytes(array))
            parts[m] = shards.describe(name, shards.npy_bytes(array), array)
        small = shards.small_parts(rows, [f.name for f in files], mods)
        for part, array in small.items():
            if part.startswith("present-") and not with_presence:
                continue
            name = shards.split_name(split, part)
            (out / name).write_bytes(shards.npy_bytes(array))
            meta[part] = shards.describe(name, shards.npy_bytes(array), array)
        manifest["splits"][split] = {"source": str(files[0].parent), "meta": meta,
                                     "shards": [{"index": 0, "parts": parts}]}
    (out / shards.MANIFEST).write_bytes(shards.manifest_bytes(manifest))
    return out


@pytest.mark.parametrize("with_presence", [True, False])
def test_prepared_shards_round_trip_presence(holes, make_cfg, tmp_path, with_presence):
    cfg = make_cfg("fairvision", holes)
    folder = tmp_path / "prepared"
    folder.mkdir()
    _write_prepared(cfg, holes, folder, with_presence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = build_datasets(cfg)
        prepared = build_datasets(cfg, prepared=folder)
    for split in SPLITS:
        _files_, _keep, want = _expected(holes, split)
        a, b = local[split], prepared[split]
        for m in KEYS:
            assert b.present[m].tolist() == want[m].tolist() == a.present[m].tolist()
        rows = np.arange(len(b))
        assert all(torch.equal(x, y) for x, y in zip(a.get_batch(rows)["present"].values(),
                                                      b.get_batch(rows)["present"].values()))
        assert torch.equal(a.get_batch(rows)["oct"], b.get_batch(rows)["oct"])
