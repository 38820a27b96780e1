"""The data audit: one file made for each defect, the refusal line, duplicates, RGB, the card,
strict JSON. Tiny generated FairVision sets (12/10/10 files); about 30 s on 2 cores."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.__main__ import main
from trainer.data import audit_dataset, build_datasets, common, prepare
from trainer.data.audit import MIN_PER_CLASS, AuditError
from trainer.data.cache import cache_root
from trainer.data.common import DataError
from trainer.data.transforms import preprocess_slo
from trainer.jsonout import dumps
from trainer.loop import result_json


def _files(root, split="Training"):
    return sorted((root / "Glaucoma" / split).glob("data_*.npz"))


def _rewrite(path, **changes):
    data = dict(np.load(path))
    data.update({k: np.asarray(v) for k, v in changes.items()})
    np.savez(path, **data)


def _refuse_nan(name):
    raise ValueError(f"not JSON: {name}")


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity, as jq and browsers do."""
    return json.loads(text, parse_constant=_refuse_nan)


# ----------------------------------------------------------------------------- one defect each

RNG = np.random.default_rng(0)
DEFECTS = {   # name: (keys written into one training file, what the refusal must say)
    "all-NaN SLO": (dict(slo_fundus=np.full((64, 64), np.nan, np.float32)),
                    r"'slo_fundus' has 4096 of 4096 values NaN"),
    "2-D OCT": (dict(oct_bscans=RNG.integers(0, 255, (64, 64), np.uint8)),
                r"'oct_bscans' has shape \(64, 64\) \(rank 2\)"),
    "RGBA SLO": (dict(slo_fundus=RNG.integers(0, 255, (64, 64, 4), np.uint8)),
                 r"expected \(H, W\) grey or \(H, W, 3\) RGB"),
    "blank SLO": (dict(slo_fundus=np.zeros((64, 64), np.uint8)), "constant"),
    "text SLO": (dict(slo_fundus=np.array("an image")), "dtype <U8, expected numbers"),
    "label 2": (dict(glaucoma=2), "'glaucoma' must be 0 or 1, found 2"),
    "label 0.5": (dict(glaucoma=0.5), "'glaucoma' must be 0 or 1, found 0.5"),
    "two labels": (dict(glaucoma=[0, 1]), "must be one number"),
    "race code 7": (dict(race=7), "unknown race code 7"),
    "language code 9": (dict(language=9), "unknown language code 9"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_is_refused_naming_the_file(small_fv, make_cfg, defect):
    changes, message = DEFECTS[defect]
    root = small_fv()
    path = _files(root)[3]
    _rewrite(path, **changes)
    with pytest.raises(AuditError, match=message) as err:
        build_datasets(make_cfg("fairvision", root))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert len(err.value.defects) == 1


def test_pickled_object_array_and_corrupt_file_are_refused(small_fv, make_cfg):
    root = small_fv()
    pickled, corrupt = _files(root)[0], _files(root, "Test")[1]
    data = dict(np.load(pickled))
    data["slo_fundus"] = np.array([object()], dtype=object)
    np.savez(pickled, **data)
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    with pytest.raises(AuditError) as err:
        build_datasets(make_cfg("fairvision", root))
    assert [d.split(":")[0] for d in err.value.defects] == [str(pickled), str(corrupt)]
    assert "'slo_fundus' holds pickled Python objects" in err.value.defects[0]
    assert "(and 1 other file with defects" in str(err.value)


def test_refusal_counts_every_split_and_audit_lists_them(small_fv, make_cfg, capsys):
    root = small_fv()
    bad = [_files(root)[0], _files(root, "Validation")[2], _files(root, "Test")[4]]
    _rewrite(bad[0], glaucoma=3)
    _rewrite(bad[1], slo_fundus=np.full((64, 64), np.inf))
    _rewrite(bad[2], oct_bscans=np.ones((4, 64, 64, 2), np.uint8))
    with pytest.raises(AuditError, match=r"and 2 other files with defects") as err:
        prepare(make_cfg("fairvision", root))
    assert str(err.value).startswith(str(bad[0]))
    rc = main(["audit", "--dataset", "fairvision", "--data-root", str(root), "--preset", "tiny",
               "--set", f"cache_dir={make_cfg('fairvision', root).cache_dir}"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err_lines) == 4 and err_lines[-1].startswith("error: ")
    assert [line.split(": ")[1] for line in err_lines[:3]] == [str(p) for p in bad]


def test_fit_refuses_before_training_in_one_line(small_fv, tmp_path, capsys):
    root = small_fv()
    path = _files(root)[5]
    _rewrite(path, slo_fundus=np.full((64, 64), np.nan, np.float32))
    rc = main(["fit", "--dataset", "fairvision", "--data-root", str(root), "--preset", "tiny",
               "--no-progress", "--set", f"cache_dir={tmp_path / 'c'}", "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err.strip().splitlines() == [f"error: {path}: key 'slo_fundus' has 4096 of 4096 "
                                            f"values NaN or infinite"]
    assert not (tmp_path / "o").exists()                          # no epoch, no checkpoint


def test_stray_files_are_ignored(small_fv, make_cfg):
    root = small_fv()
    folder = root / "Glaucoma" / "Training"
    for name in ("ideal_reader.json", ".DS_Store", "notes.txt", "ideal_reader.npy"):
        (folder / name).write_bytes(b"\x00 not data")
    assert len(build_datasets(make_cfg("fairvision", root))["train"]) == 12


def test_empty_test_split_is_refused_naming_it(small_fv, make_cfg):
    root = small_fv()
    for path in _files(root, "Test"):
        path.unlink()
    with pytest.raises(DataError, match=r"Test: split 'test' holds no data_\*\.npz files"):
        build_datasets(make_cfg("fairvision", root))


def test_single_class_split_is_refused_naming_it(small_fv, make_cfg):
    root = small_fv()
    for path in _files(root, "Validation"):
        _rewrite(path, glaucoma=1)
    with pytest.raises(DataError, match=r"Validation: split 'val' has only label 1"):
        build_datasets(make_cfg("fairvision", root))


# ----------------------------------------------------------------------------- duplicates

@pytest.mark.parametrize("target", ["Test", "Training"])
def test_duplicates_are_refused_naming_both_files_unless_allowed(small_fv, make_cfg, target):
    root = small_fv()
    source = _files(root)[0]
    copy = _files(root, target)[-1]
    shutil.copyfile(source, copy)                                  # byte for byte
    cfg = make_cfg("fairvision", root)
    where = "a test-set leak" if target == "Test" else "in the same split"
    with pytest.raises(DataError, match=where) as err:
        build_datasets(cfg)
    message = str(err.value)
    assert str(copy) in message and str(source) in message and "allow_duplicates" in message
    with pytest.warns(UserWarning, match="duplicate"):
        build_datasets(cfg.replace(allow_duplicates=True))
    assert audit_dataset(cfg.replace(allow_duplicates=True))["card"]["duplicates"] == 1
    assert "'slo_fundus' and 'oct_bscans' pixels" in message


def test_pixel_identical_but_different_file_is_a_duplicate(small_fv, make_cfg):
    root = small_fv()
    source, other = _files(root)[1], _files(root, "Test")[0]
    _rewrite(other, slo_fundus=np.load(source)["slo_fundus"])     # same image, other metadata
    pattern = r"same 'slo_fundus' pixels as .*" + source.name + r" \(train\), across"
    with pytest.raises(DataError, match=pattern):
        build_datasets(make_cfg("fairvision", root))


# ----------------------------------------------------------------------------- RGB fundus

def test_rgb_fundus_becomes_grey_by_luma_and_is_announced(small_fv, make_cfg):
    from PIL import Image

    root = small_fv()
    path = _files(root)[0]
    rgb = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    rgb[..., 0] //= 4                                              # channels differ strongly
    _rewrite(path, slo_fundus=rgb)
    with pytest.warns(UserWarning, match=r"1 SLO fundus image\(s\) are RGB"):
        ds = build_datasets(make_cfg("fairvision", root))
    got = np.asarray(ds["train"].arrays["slo"][0]).astype(int)
    pil_grey = np.asarray(Image.fromarray(rgb).convert("L"))      # independent conversion
    want = preprocess_slo(pil_grey, 32).astype(int)
    assert np.abs(got - want).max() <= 1
    channel_mean = preprocess_slo(rgb.mean(axis=-1), 32).astype(int)
    assert np.abs(got - channel_mean).max() > 5                    # not the old channel average
    assert audit_dataset(make_cfg("fairvision", root))["card"]["rgb_converted"] == 1


# ----------------------------------------------------------------------------- card, no extra read

def test_card_counts_match_the_csv_and_audit_reads_each_file_once(small_fv, make_cfg, capsys):
    root = small_fv(n_train=30, n_val=24, n_test=24)
    cfg = make_cfg("fairvision", root, "race")
    n_files = sum(1 for _ in root.rglob("data_*.npz"))
    before = common.DECODE_COUNT["npz"]
    report = audit_dataset(cfg, attribute="race")
    build_datasets(cfg)                                            # the fit after the audit
    assert common.DECODE_COUNT["npz"] - before == n_files          # one read per file in all
    with open(root / "Glaucoma" / "data_summary_glaucoma.csv") as fh:
        rows = list(csv.DictReader(fh))
    split_of = {"training": "train", "validation": "val", "test": "test"}
    card = report["card"]
    for split in ("train", "val", "test"):
        mine = [r for r in rows if split_of[r["use"].lower()] == split]
        for code, name in enumerate(("asian", "black", "white")):
            g = [r for r in mine if int(r["race"]) == code]
            pos = sum(int(r["glaucoma"]) for r in g)
            assert card["splits"][split]["attributes"]["race"]["groups"][name] == \
                {"n": len(g), "positives": pos, "negatives": len(g) - pos}
        unknown = sum(int(r["hispanic"]) == -1 for r in mine)
        assert card["splits"][split]["attributes"]["ethnicity"]["unknown"] == unknown
    thin = [w for w in report["warnings"] if f"fewer than {MIN_PER_CLASS}" in w]
    assert thin and all("race" in w for w in thin)                 # 24-sample val/test: too few
    card_json = Path(report["card_path"]).with_suffix(".json")
    assert card_json.parent == cache_root(cfg)                     # beside the cache
    assert strict_loads(card_json.read_text()) == card
    assert main(["audit", "--dataset", "fairvision", "--data-root", str(root), "--preset", "tiny",
                 "--attribute", "race", "--set", f"cache_dir={cfg.cache_dir}"]) == 0
    out = capsys.readouterr().out
    assert "race          asian" in out and "warning: split 'val', race" in out
    assert "gender        female" not in out and "data_0" not in out  # no file names


# ----------------------------------------------------------------------------- strict JSON

def test_json_output_has_null_for_undefined_values():
    result = {"best_epoch": 1, "val": {"auc": 0.8, "group_auc": {"asian": math.nan, "white": 0.7},
                                       "es_auc": np.float32(0.5)},
              "test": {"mean": {"dpd": float("inf")}}, "history": [],
              "config": {**{k: 0 for k in ("dataset", "attribute", "modalities", "rho",
                                           "lambda_gm", "tau", "delta", "lambda_f", "seed", "epochs")},
                         "mode": "full", "modulation_target": "gradient"}}
    parsed = strict_loads(result_json(result))
    assert parsed["val"]["group_auc"] == {"asian": None, "white": 0.7}
    assert parsed["test"]["mean"]["dpd"] is None and parsed["val"]["es_auc"] == 0.5
    assert strict_loads(dumps({"a": np.array([1.0, np.nan])})) == {"a": [1.0, None]}
    with pytest.raises(ValueError, match="NaN"):
        strict_loads('{"a": NaN}')                                 # the parser does refuse
