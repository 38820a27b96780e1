"""Real loaders on generated data: both layouts, every quirk, items, batches and every error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data import DataError, build_datasets, prepare
from trainer.data.transforms import batch_transform


@pytest.mark.parametrize("attribute", ["gender", "race", "ethnicity", "language", "maritalstatus"])
def test_fairvision_three_modalities(fv3_root, make_cfg, attribute, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "fv3cache"  # shared: built once, then read
    cfg = make_cfg("fairvision", fv3_root, attribute, cache_dir=cache,
                   modalities=("slo", "oct", "note"))
    ds = build_datasets(cfg)
    item = ds["val"][0]
    assert item["slo"].dtype == torch.uint8 and item["slo"].shape == (32, 32)
    assert item["oct"].dtype == torch.float16 and item["oct"].shape == (4, 32, 32)
    ids = item["note"]["input_ids"]
    assert ids.dtype == torch.int64 and ids.shape == (48,)
    assert item["label"].dtype == torch.float32 and item["group"].dtype == torch.int64
    files = sorted((fv3_root / "Glaucoma" / "Test").glob("data_*.npz"))
    key = {"gender": "male", "ethnicity": "hispanic"}.get(attribute, attribute)
    codes = np.array([int(np.load(f)[key]) for f in files])
    assert len(ds["test"]) == int((codes != -1).sum())            # -1 dropped for this attribute
    assert np.array_equal(ds["test"].groups, codes[codes != -1])


def test_unknown_dropped_only_for_evaluated_attribute(vl_root, make_cfg):
    lang = build_datasets(make_cfg("fairvlmed", vl_root, "language"))
    gender = build_datasets(make_cfg("fairvlmed", vl_root, "gender"))
    n_files = {s: len(list((vl_root / f).glob("*.npz")))
               for s, f in [("train", "Training"), ("val", "Validation"), ("test", "Testing")]}
    assert {s: len(d) for s, d in gender.items()} == n_files
    assert sum(len(d) for d in lang.values()) < sum(n_files.values())


def test_fairvlmed_quirks_and_note_sources(vl_root, vl_lower_root, make_cfg):
    for root in (vl_root, vl_lower_root):  # Testing + string race; lowercase + int race
        race = build_datasets(make_cfg("fairvlmed", root, "race"))
        assert set(race["train"].groups.tolist()) <= {0, 1, 2} and len(race["test"]) > 0
    ids = {}
    for source in ("note", "note_extra", "gpt4_summary"):
        ds = build_datasets(make_cfg("fairvlmed", vl_root, note_source=source,
                                          note_max_length=256))["train"]
        mask = ds.get_batch(np.arange(len(ds)))["note"]["attention_mask"]
        ids[source] = mask.sum(1).float().mean()
    assert ids["gpt4_summary"] < ids["note"] < ids["note_extra"]


def test_fairvision_lowercase_and_string_race(fv_lower_root, make_cfg):
    ds = build_datasets(make_cfg("fairvision", fv_lower_root, "race"))
    files = sorted((fv_lower_root / "Glaucoma" / "train").glob("data_*.npz"))
    names = [str(np.load(f)["race"]) for f in files]
    codes = {"Asian": 0, "Black or African American": 1, "White or Caucasian": 2}
    expected = [codes[n] for n in names]
    assert ds["train"].groups.tolist() == expected
    # a data root pointing at Glaucoma/ itself also works
    assert len(build_datasets(make_cfg("fairvision", fv_lower_root / "Glaucoma"))["val"]) == 30


def test_get_batch_matches_items_and_transform(vl_root, make_cfg):
    ds = build_datasets(make_cfg("fairvlmed", vl_root))["train"]
    batch = ds.get_batch([3, 0, 7])
    for j, i in enumerate([3, 0, 7]):
        item = ds[i]
        assert torch.equal(batch["slo"][j], item["slo"]) and batch["label"][j] == item["label"]
        assert torch.equal(batch["note"]["input_ids"][j], item["note"]["input_ids"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert next(iter(loader))["slo"].shape == (4, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = batch_transform(batch, train=True, generator=g)
    assert out["slo"].shape == (3, 3, 32, 32) and out["slo"].dtype == torch.float32
    ev = batch_transform(batch, train=False)
    assert torch.allclose(ev["slo"][:, 0] * 0.229 + 0.485, batch["slo"].float() / 255, atol=1e-5)


def test_prepare_summary(vl_root, make_cfg):
    summary = prepare(make_cfg("fairvlmed", vl_root, "race"))
    assert set(summary["splits"]) == {"train", "val", "test"}
    assert sum(summary["splits"]["train"]["groups"].values()) == summary["splits"]["train"]["n"]


def _rewrite(path, **changes):
    data = dict(np.load(path))
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = np.array(v)
    np.savez(path, **data)


def _first(root, split="Training"):
    return sorted((root / "Glaucoma" / split).glob("data_*.npz"))[0]


def test_error_missing_split_folder(small_fv, make_cfg):
    root = small_fv()
    (root / "Glaucoma" / "Validation").rename(root / "Glaucoma" / "elsewhere")
    with pytest.raises(DataError, match=r"Glaucoma.*split 'val'"):
        build_datasets(make_cfg("fairvision", root))


@pytest.mark.parametrize("key", ["glaucoma", "male"])   # an absent image: tests/test_missing_data
def test_error_missing_key(small_fv, make_cfg, key):
    root = small_fv()
    path = _first(root)
    _rewrite(path, **{key: None})
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg("fairvision", root, "gender"))
    assert path.name in str(err.value) and key in str(err.value)


def test_error_missing_note_key_for_third_modality(small_fv, make_cfg):
    root = small_fv()
    with pytest.raises(DataError, match=r"Training: split 'train' has no sample with modality "
                                        r"'note' \(key 'note' absent in every file\)"):
        build_datasets(make_cfg("fairvision", root, modalities=("slo", "oct", "note")))


@pytest.mark.parametrize("key,value", [("race", 7), ("race", "Martian"), ("male", 3)])
def test_error_unknown_code(small_fv, make_cfg, key, value):
    root = small_fv()
    path = _first(root)
    _rewrite(path, **{key: value})
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg("fairvision", root, "race" if key == "race" else "gender"))
    assert path.name in str(err.value) and key in str(err.value)


def test_error_corrupt_file(small_fv, make_cfg):
    root = small_fv()
    path = _first(root, "Test")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=path.name):
        build_datasets(make_cfg("fairvision", root))


def test_error_single_group_and_empty_group_reported(small_fv, make_cfg):
    root = small_fv()
    for f in sorted((root / "Glaucoma" / "Validation").glob("*.npz")):
        _rewrite(f, male=1, race=2 if f.name.endswith(("1.npz", "3.npz")) else 1)
    with pytest.raises(DataError, match=r"Validation.*fewer than 2 groups.*'male"):
        build_datasets(make_cfg("fairvision", root, "gender"))
    with pytest.warns(UserWarning, match="asian"):
        summary = prepare(make_cfg("fairvision", root, "race"))
    assert summary["splits"]["val"]["empty_groups"] == ["asian"]


def test_error_gpt4_column_missing(vl_lower_root, make_cfg, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(vl_lower_root, root)
    csv = root / "data_summary.csv"
    csv.write_text(csv.read_text().replace("gpt4_summary", "summary", 1))
    with pytest.raises(DataError, match=r"data_summary\.csv.*'gpt4_summary'"):
        build_datasets(make_cfg("fairvlmed", root, note_source="gpt4_summary"))
