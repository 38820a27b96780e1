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


# ----------------------------------------------------------------------------- the generator

# Written out here from docs/data.md (not imported), so a changed factor fails a test.
RACE_FACTORS, RACE_SHARE = np.array([1.5, 2.0, 0.8]), np.array([0.085, 0.149, 0.766])


def _absent_keys(root, split, key):
    return np.array([not _has(f, key) for f in _files(root, split)])


def _within_binomial(k, n, p, sds=4.0):
    return abs(k - n * p) <= sds * np.sqrt(n * p * (1 - p)) + 1


def test_missing_rates_match_the_request(fresh_dataset):
    root = fresh_dataset(n_train=300, n_val=150, n_test=150, seed=21, missing="slo=0.3,oct=0.1")
    for split in SPLITS:
        for key, rate in (("slo_fundus", 0.3), ("oct_bscans", 0.1)):
            absent = _absent_keys(root, split, key)
            assert _within_binomial(absent.sum(), len(absent), rate), (split, key, absent.mean())
        previews = sorted(p.stem[4:] for p in _files(root, split)[0].parent.glob("slo_*.jpg"))
        assert previews == [f.stem[5:] for f in _files(root, split) if _has(f, "slo_fundus")]


def test_missing_by_race_follows_the_documented_factors(fresh_dataset):
    root = fresh_dataset(n_train=400, n_val=200, n_test=200, seed=11, missing="oct=0.3",
                         missing_by="race")
    want = 0.3 * RACE_FACTORS / (RACE_SHARE @ RACE_FACTORS)     # ~ (0.43, 0.58, 0.23)
    absent = np.concatenate([_absent_keys(root, s, "oct_bscans") for s in SPLITS])
    race = np.concatenate([[int(np.load(f)["race"]) for f in _files(root, s)] for s in SPLITS])
    for code in range(3):
        lack = absent[race == code]
        assert _within_binomial(lack.sum(), len(lack), want[code]), (code, lack.mean())
    assert absent[race == 1].mean() > 2 * absent[race == 2].mean()
    assert _within_binomial(absent.sum(), len(absent), RACE_SHARE @ want)   # the mean rate kept


@pytest.mark.parametrize("by,factors,shares", [
    ("race", RACE_FACTORS, RACE_SHARE), ("gender", np.array([1.25, 0.75]), np.array([0.57, 0.43]))])
def test_group_rates_at_scale(by, factors, shares):
    from trainer.data import acquisition
    from trainer.data.synthetic import synthesize_metadata

    meta = synthesize_metadata("fairvision", 200_000, seed=5)
    absent = acquisition.draw_absent(5, 0, meta, {"oct": 0.2}, by,
                                     acquisition.site_profile("fairvision", "default"))["oct"]
    want = 0.2 * factors / (shares @ factors)
    got = np.array([absent[meta[by] == g].mean() for g in range(len(factors))])
    assert np.allclose(got, want, atol=0.01) and abs(absent.mean() - 0.2) < 0.004


def test_missing_only_leaves_keys_out(fresh_dataset):
    """The same dataset as without --missing, but for the keys left out (and the CSV's blank
    notes): the draws of every other part are untouched."""
    full = fresh_dataset(layout="fairvlmed", n_train=30, n_val=10, n_test=10, seed=6)
    holed = fresh_dataset(layout="fairvlmed", n_train=30, n_val=10, n_test=10, seed=6,
                          missing="note=0.4,slo=0.2")
    files = sorted(full.rglob("data_*.npz"))
    lost = []
    for f in files:
        a, b = np.load(f), np.load(holed / f.relative_to(full))
        assert all(np.array_equal(a[k], b[k]) for k in b.files)
        lost.append(set(a.files) - set(b.files))
    assert {frozenset(k) for k in lost} == {frozenset(), frozenset({"slo_fundus"}),
                                           frozenset({"note", "note_extra"}),
                                           frozenset({"slo_fundus", "note", "note_extra"})}
    import csv

    with open(holed / "data_summary.csv") as fh:
        blank = {r["filename"] for r in csv.DictReader(fh) if not r["gpt4_summary"]}
    assert blank == {f.name for f in holed.rglob("data_*.npz") if not _has(f, "note")}
    with open(holed / "ideal_reader.csv") as fh:
        side = {r["filename"]: r for r in csv.DictReader(fh)}
    assert {n for n, r in side.items() if r["present_note"] == "0"} == blank
    # the ideal reader of what each sample has: the joint, one modality's, or the prior alone
    prior = np.log(0.505 / 0.495)
    for r in side.values():
        has = (r["present_slo"], r["present_note"])
        want = {("1", "1"): r["evidence_all"], ("1", "0"): r["evidence_slo"],
                ("0", "1"): r["evidence_note"], ("0", "0"): prior}[has]
        assert float(r["evidence_available"]) == pytest.approx(float(want), abs=1e-8)


def test_generated_missing_notes_reach_the_loader_as_absent(fresh_dataset, make_cfg):
    root = fresh_dataset(layout="fairvlmed", n_train=40, n_val=30, n_test=30, seed=2,
                         missing="note=0.3")
    for source in ("note", "gpt4_summary"):
        ds = build_datasets(make_cfg("fairvlmed", root, note_source=source))
        for split, folder in (("train", "Training"), ("test", "Test")):
            files = sorted((root / folder).glob("data_*.npz"))
            want = [_has(f, "note") for f in files]
            assert ds[split].present["note"].tolist() == want


def test_generator_is_deterministic_with_missing(fresh_dataset):
    kw = dict(n_train=12, n_val=6, n_test=6, seed=9, missing="oct=0.3", missing_by="gender")
    a, b = fresh_dataset(**kw), fresh_dataset(**kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("flags,message", [
    (["--missing", "xyz=0.3"], "--missing xyz=0.3: unknown modality 'xyz'; choose from slo, oct"),
    (["--missing", "note=0.3"], "--missing note=0.3: unknown modality 'note'"),
    (["--missing", "slo=1"], "--missing slo=1: rate 1 outside [0, 1)"),
    (["--missing", "oct=-0.1"], "--missing oct=-0.1: rate -0.1 outside [0, 1)"),
    (["--missing", "oct0.1"], "--missing oct0.1: expected modality=rate"),
    (["--missing", "oct=many"], "--missing oct=many: rate 'many' is not a number"),
    (["--missing", "oct=0.6", "--missing-by", "race"],
     "--missing oct=0.6 with --missing-by race: group code 1 would have rate 1.16 >= 1"),
    (["--missing-by", "race"], "--missing-by race: needs --missing"),
    (["--missing", "oct=0.9", "--n-train", "4", "--n-val", "2", "--n-test", "2"],
     "--missing oct=0.9: leaves 'oct' absent in every sample of split 'train' (4 samples)"),
])
def test_bad_missing_spec_is_one_line_naming_flag_and_value(tmp_path, capsys, flags, message):
    from trainer.__main__ import main

    out = tmp_path / "d"
    argv = ["synthesize", "--layout", "fairvision", "--out", str(out), "--n-train", "6",
            "--n-val", "4", "--n-test", "4", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + message), err
