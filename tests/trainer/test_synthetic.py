"""Generator: proportions, encodings, determinism, and the designed structure."""
from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from trainer.data import build_datasets
from trainer.data.synthetic import add_arguments, run, synthesize, synthesize_metadata
from trainer.models.text import TINY_VOCAB


@pytest.mark.parametrize("layout,female,race,glaucoma", [
    ("fairvision", 0.570, (0.085, 0.149, 0.766), 0.487),
    ("fairvlmed", 0.563, (0.082, 0.149, 0.769), 0.505)])
def test_proportions(layout, female, race, glaucoma):
    meta = synthesize_metadata(layout, 8000, seed=0)
    assert abs((meta["gender"] == 0).mean() - female) < 0.02
    assert np.allclose(np.bincount(meta["race"], minlength=3) / 8000, race, atol=0.015)
    assert abs(meta["glaucoma"].mean() - glaucoma) < 0.02
    for attr in ("ethnicity", "language", "maritalstatus"):
        unknown = (meta[attr] == -1).mean()
        assert 0.003 < unknown < (0.03 if layout == "fairvision" else 0.08)


def test_fairvision_encodings(fv3_root, fv_lower_root):
    z = np.load(fv3_root / "Glaucoma" / "Training" / "data_00001.npz")
    assert z["oct_bscans"].dtype == np.uint8 and z["oct_bscans"].shape == (16, 64, 64)
    assert z["slo_fundus"].dtype == np.uint8 and z["slo_fundus"].shape == (64, 64)
    for key in ("glaucoma", "race", "male", "hispanic", "language", "maritalstatus"):
        assert z[key].shape == () and z[key].dtype.kind == "i"
    assert "gender" not in z.files and "ethnicity" not in z.files and z["note"].dtype.kind == "U"
    assert (fv3_root / "Glaucoma" / "Training" / "slo_00001.jpg").is_file()
    assert (fv3_root / "Glaucoma" / "data_summary_glaucoma.csv").is_file()
    z = np.load(fv_lower_root / "Glaucoma" / "test" / "data_00071.npz")
    assert str(z["race"]) in ("Asian", "Black or African American", "White or Caucasian")
    assert "note" not in z.files


def test_fairvlmed_encodings(vl_root):
    z = np.load(vl_root / "Testing" / "data_00101.npz")
    assert z["slo_fundus"].shape == (80, 64) and "oct_bscans" not in z.files
    for key in ("gender", "ethnicity", "language", "maritalstatus", "glaucoma"):
        assert z[key].shape == () and z[key].dtype.kind == "i"
    assert z["tds"].shape == (52,) and z["note"].dtype.kind == "U"
    assert str(z["note_extra"]).endswith(str(z["note"]))
    with open(vl_root / "data_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"filename", "note", "gpt4_summary", "use"} <= set(rows[0])
    assert {r["use"] for r in rows} == {"training", "validation", "test"}
    assert max(len(r["gpt4_summary"]) for r in rows) < 180
    for name in ("gpt-4_summarized_notes.csv", "original_notes.csv"):
        assert (vl_root / name).is_file()


def test_notes_use_tiny_vocabulary(vl_root):
    vocab = set(TINY_VOCAB.read_text().split())
    with open(vl_root / "data_summary.csv") as fh:
        words = [w.strip(".,:;()").lower() for r in csv.DictReader(fh) for w in r["note"].split()]
    words = [w for w in words if w and not w.replace(".", "").replace("-", "").isdigit()]
    assert np.mean([w in vocab for w in words]) > 0.8


def test_deterministic_by_seed(tmp_path):
    a = synthesize("fairvlmed", tmp_path / "a", 6, 4, 4, seed=7, modalities=("slo", "oct", "note"))
    b = synthesize("fairvlmed", tmp_path / "b", 6, 4, 4, seed=7, modalities=("slo", "oct", "note"))
    c = synthesize("fairvlmed", tmp_path / "c", 6, 4, 4, seed=8, modalities=("slo", "oct", "note"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / files[-1]).read_bytes() != (c / files[-1]).read_bytes()


def test_cli_arguments(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--layout", "fairvlmed", "--out", str(tmp_path / "d"),
                              "--n-train", "4",
                              "--n-val", "3", "--n-test", "3", "--split-style", "lowercase",
                              "--modalities", "slo,oct,note", "--race-encoding", "str"])
    assert run(args) == 0
    z = np.load(tmp_path / "d" / "test" / "data_00010.npz")
    assert "oct_bscans" in z.files and z["race"].dtype.kind == "U"


def _auc_by_group(X, y, groups):
    model = LogisticRegression(max_iter=3000)
    p = cross_val_predict(model, X, y, cv=5, method="predict_proba")[:, 1]
    return roc_auc_score(y, p), {g: roc_auc_score(y[groups == g], p[groups == g])
                                 for g in np.unique(groups)}


def test_designed_structure(fv3_root, make_cfg):
    """OCT: strong and group-dependent; SLO: weaker, group-uniform; note: informative."""
    out = {}
    for attribute in ("gender", "race"):
        cfg = make_cfg("fairvision", fv3_root, attribute, modalities=("slo", "oct", "note"))
        ds = build_datasets(cfg)["train"]
        b = ds.get_batch(np.arange(len(ds)))
        y, g = b["label"].numpy(), b["group"].numpy()
        slo = b["slo"].numpy().reshape(len(y), -1)
        features = {
            "oct": b["oct"].float().numpy().mean(axis=(1, 3)),        # depth profile
            "slo": np.stack([(slo > t).mean(1) for t in range(120, 250, 10)], 1),  # bright area
            "note": np.stack([np.bincount(r, minlength=300)[:300]
                              for r in b["note"]["input_ids"].numpy()]).astype(float)}
        out[attribute] = {m: _auc_by_group(X, y, g) for m, X in features.items()}
    auc = {m: out["gender"][m][0] for m in ("oct", "slo", "note")}
    assert auc["oct"] > auc["slo"] > 0.6 and auc["note"] > 0.6
    oct_gender, oct_race = out["gender"]["oct"][1], out["race"]["oct"][1]
    assert oct_gender[1] - oct_gender[0] > 0.03                      # male > female
    assert oct_race[2] - min(oct_race[0], oct_race[1]) > 0.03        # white > asian/black
    slo_gender = out["gender"]["slo"][1]
    assert abs(slo_gender[1] - slo_gender[0]) < oct_gender[1] - oct_gender[0]
