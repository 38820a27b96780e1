"""Generator: proportions, encodings, determinism, and the designed structure."""
from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from trainer.data import acquisition, build_datasets
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


# ----------------------------------------------------------------------------- the shifted site
# docs/data.md: contrast x0.6, pixel noise x2 at half resolution resampled back; race mix
# Asian/Black/White 0.20/0.35/0.45, female 0.48; the same disease.

def _high_frequency_share(images: np.ndarray) -> float:
    """Share of the (mean-removed) images' spectral power above half the Nyquist frequency."""
    x = images.astype(float) - images.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2
    h, w = x.shape[-2:]
    high = np.maximum(np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.fftfreq(w))[None]) > 0.25
    return float((power * high).sum() / power.sum())


def _images(root, key):
    return np.stack([np.load(f)[key] for f in sorted(root.rglob("data_*.npz"))]).astype(float)


def test_shifted_site_changes_contrast_noise_resolution(fresh_dataset, make_cfg):
    kw = dict(n_train=30, n_val=20, n_test=20, seed=8)
    same, other = fresh_dataset(**kw), fresh_dataset(**kw, site="shifted")
    # the same layout: the loaders read it as is
    assert build_datasets(make_cfg("fairvision", other))["test"][0]["oct"].shape == (4, 32, 32)
    octs = {"same": _images(same, "oct_bscans"), "other": _images(other, "oct_bscans")}
    slos = {"same": _images(same, "slo_fundus"), "other": _images(other, "slo_fundus")}
    assert octs["same"].shape == octs["other"].shape and slos["same"].shape == slos["other"].shape
    # contrast: range of the mean depth profile of the B-scans (the noise averages out)
    profile = {k: v.mean(axis=(0, 1, 3)) for k, v in octs.items()}
    span = {k: p.max() - p.min() for k, p in profile.items()}
    assert 0.5 < span["other"] / span["same"] < 0.7
    # noise against that contrast: adjacent B-scans share their signal, not their speckle
    noise = {k: (v[:, 1:] - v[:, :-1]).std() / np.sqrt(2) / span[k] for k, v in octs.items()}
    assert noise["other"] > 1.2 * noise["same"]
    # resolution: little power left above half the Nyquist frequency
    for images in (octs, slos):
        assert _high_frequency_share(images["other"]) < 0.3 * _high_frequency_share(images["same"])
    spread = {k: np.mean([np.percentile(x, 95) - np.percentile(x, 5) for x in v])
              for k, v in slos.items()}
    assert 0.55 < spread["other"] / spread["same"] < 0.85


def test_shifted_site_same_disease_other_population(fresh_dataset):
    a = synthesize_metadata("fairvision", 50_000, seed=2)
    b = synthesize_metadata("fairvision", 50_000, seed=2, site="shifted")
    assert np.array_equal(a["glaucoma"], b["glaucoma"]) and np.array_equal(a["cdr"], b["cdr"])
    assert np.allclose(np.bincount(b["race"]) / 50_000, (0.20, 0.35, 0.45), atol=0.01)
    assert abs((b["gender"] == 0).mean() - 0.48) < 0.01
    root = fresh_dataset(n_train=200, n_val=100, n_test=100, seed=3, site="shifted")
    race = np.array([int(np.load(f)["race"]) for f in root.rglob("data_*.npz")])
    share = np.bincount(race, minlength=3) / len(race)
    assert np.all(np.abs(share - (0.20, 0.35, 0.45)) < 4 * np.sqrt(0.25 / len(race)))


def test_shift_overrides_and_their_errors(tmp_path, capsys):
    from trainer.__main__ import main

    base = ["synthesize", "--layout", "fairvision", "--n-train", "6", "--n-val", "4",
            "--n-test", "4", "--seed", "3"]
    assert main([*base, "--out", str(tmp_path / "a"), "--site", "shifted",
                 "--shift", "resolution=0.25,race=0.5/0.25/0.25"]) == 0
    site = json.loads((tmp_path / "a" / "site.json").read_text())
    assert site == {"site": "custom", "scanner": {"contrast": 0.6, "noise": 2.0,
                                                  "resolution": 0.25},
                    "female": 0.48, "race": [0.5, 0.25, 0.25]}
    meta = synthesize_metadata("fairvision", 40_000, seed=1, site=acquisition.with_overrides(
        "default", "race=0.5/0.25/0.25"))
    assert np.allclose(np.bincount(meta["race"]) / 40_000, (0.5, 0.25, 0.25), atol=0.01)
    for spec, why in (("contrast=0", "expected contrast, noise (> 0)"),
                      ("resolution=2", "resolution (0, 1]"), ("race=0.5/0.5", "race=A/B/W"),
                      ("noise=loud", "'loud' is not a number"), ("tilt=3", "expected")):
        assert main([*base, "--out", str(tmp_path / "b"), "--shift", spec]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --shift {spec}: ") and why in err[0]


# ---------------------------------------------------------------------- the sensitive world
# docs/data.md: women 25%; the OCT glaucoma-protocol band, P(band | label) 0.1/0.9 for men and
# 0.5/0.5 for women; a disc-centred SLO (disc radius 0.25, cup +120) with cup-to-disc sd 0.10.

def _content_digest(root) -> str:
    """sha256 over every written file's name and content (an npz by its decoded arrays, so the
    digest does not depend on zlib's byte stream); JPEG previews left out (PIL's encoder)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix == ".jpg":
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.suffix == ".npz":
            with np.load(p) as z:
                for key in sorted(z.files):
                    h.update(key.encode())
                    h.update(np.ascontiguousarray(z[key]).tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def test_default_world_is_unchanged(tmp_path):
    """Golden digests of two default datasets, taken with the generator before worlds existed
    (commit c359830): the default world draws and writes exactly what it did."""
    fv = synthesize("fairvision", tmp_path / "fv", 6, 4, 4, seed=5, modalities=("slo", "oct", "note"))
    vl = synthesize("fairvlmed", tmp_path / "vl", 6, 4, 4, seed=5)
    assert _content_digest(fv) == "16e1ff2f95cde9d0095ddd0201be4a4f43f102f2de13f59539c4edb3803f6cff"
    assert _content_digest(vl) == "f6d3f124f7e77b78646bb9f7bcc779ae7908b884adee91886c8a9914c5aca8a7"
    assert not (fv / "world.json").exists()


def test_sensitive_world_draws_its_mechanism():
    n = 60_000
    meta = synthesize_metadata("fairvision", n, seed=4, world="sensitive")
    base = synthesize_metadata("fairvision", n, seed=4)
    female, y, band = meta["gender"] == 0, meta["glaucoma"] == 1, meta["protocol"]
    assert abs(female.mean() - 0.25) < 0.01
    for who, (p0, p1) in ((female, (0.5, 0.5)), (~female, (0.1, 0.9))):
        assert abs(band[who & ~y].mean() - p0) < 0.015 and abs(band[who & y].mean() - p1) < 0.015
    # the same disease draws as the default world; the cup-to-disc ratio only less noisy
    assert np.array_equal(meta["glaucoma"], base["glaucoma"])
    inside = (meta["cdr"] > 0.15) & (meta["cdr"] < 0.85) & ~y
    assert abs(meta["cdr"][inside].std() - 0.10) < 0.01
    with pytest.raises(ValueError, match="--world flat: choose one of default, sensitive"):
        synthesize_metadata("fairvision", 10, world="flat")


def test_sensitive_world_images_carry_the_shortcut(tmp_path):
    """The protocol band is in the pixels (deep rows brighter), the SLO disc is larger; the
    CLI writes world.json."""
    from trainer.__main__ import main

    out = tmp_path / "s"
    assert main(["synthesize", "--layout", "fairvision", "--out", str(out), "--n-train", "40",
                 "--n-val", "4", "--n-test", "4", "--seed", "2", "--world", "sensitive"]) == 0
    assert json.loads((out / "world.json").read_text())["name"] == "sensitive"
    meta = synthesize_metadata("fairvision", 40, seed=int(np.random.default_rng([2, 0])
                                                         .integers(2**31)), world="sensitive")
    octs = np.stack([np.load(f)["oct_bscans"] for f in
                     sorted((out / "Glaucoma" / "Training").glob("data_*.npz"))]).astype(float)
    deep = octs[:, :, 48:, :].mean(axis=(1, 2, 3))          # rows below the RPE band
    band = meta["protocol"]
    assert 0 < band.sum() < 40
    assert deep[band].min() > deep[~band].max()              # the band separates them


def test_sensitive_world_ideal_reader(tmp_path):
    """Calibrated on 40,000 draws of the world itself; the reader that ignores the band is
    fairer across gender than the joint one (the shortcut costs women AUC)."""
    from scipy.special import expit

    from trainer.data.ideal import evidence

    meta = synthesize_metadata("fairvision", 40_000, seed=9, world="sensitive")
    ev = evidence("fairvision", meta, modalities=("slo", "oct"), world="sensitive")
    y, female = meta["glaucoma"], meta["gender"] == 0
    for key in ("oct", "all", "no_shortcut"):
        edges = np.quantile(ev[key], np.linspace(0, 1, 11)[1:-1])
        which = np.digitize(ev[key], edges)
        gap = max(abs(y[which == b].mean() - expit(ev[key][which == b]).mean())
                  for b in range(10))
        assert gap < 0.025, key
    gap = {k: roc_auc_score(y[~female], ev[k][~female]) - roc_auc_score(y[female], ev[k][female])
           for k in ("oct", "no_shortcut")}
    assert gap["oct"] > 0.03 and gap["no_shortcut"] < gap["oct"] - 0.03
