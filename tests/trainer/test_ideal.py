"""The known answer: ideal-reader evidence checked against the generator itself (calibration),
against a fitted model (it must not be beaten), and the ceiling command on a generated dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from trainer.__main__ import main
from trainer.data.ideal import evidence, read_side_file
from trainer.data.generative import NOTE_LABEL_NOISE, PROFILES
from trainer.data.synthetic import synthesize_metadata


@pytest.fixture(scope="module")
def big_meta():
    return synthesize_metadata("fairvision", 40_000, seed=11)


def _calibration_gap(y, log_odds, bins=10):
    """max over evidence deciles of |empirical P(y=1) - mean posterior|: a Monte-Carlo check
    of the posterior against samples drawn by the generator itself."""
    edges = np.quantile(log_odds, np.linspace(0, 1, bins + 1)[1:-1])
    which = np.digitize(log_odds, edges)
    return max(abs(y[which == b].mean() - expit(log_odds[which == b]).mean())
               for b in range(bins))


@pytest.mark.parametrize("modality", ["slo", "oct", "all"])
def test_evidence_is_the_calibrated_posterior(big_meta, modality):
    ev = evidence("fairvision", big_meta, modalities=("slo", "oct"))[modality]
    assert _calibration_gap(big_meta["glaucoma"], ev) < 0.025


def test_evidence_is_not_beaten_by_a_fitted_model(big_meta):
    """Bayes-optimal: no classifier of the same latents ranks better (a logistic fit on
    polynomial features of rnfl and cdr, trained on half, scored on the other half)."""
    y, half = big_meta["glaucoma"], len(big_meta["glaucoma"]) // 2
    ev = evidence("fairvision", big_meta, modalities=("slo", "oct"))
    r, c = big_meta["rnfl"], big_meta["cdr"]
    x = np.column_stack([r, c, r * r, c * c, r * c, np.log(r)])
    x = (x - x.mean(0)) / x.std(0)
    fit = LogisticRegression(max_iter=2000).fit(x[:half], y[:half])
    fitted = roc_auc_score(y[half:], fit.decision_function(x[half:]))
    ideal = roc_auc_score(y[half:], ev["all"][half:])
    assert ideal >= fitted - 0.002
    assert ideal > roc_auc_score(y[half:], ev["oct"][half:]) + 0.005   # SLO adds information


def test_note_evidence_and_uninformative_modality():
    meta = synthesize_metadata("fairvision", 2000, seed=3, informative=("slo",))
    pos = np.random.default_rng(0).random(2000) < 0.5
    ev = evidence("fairvision", meta, pos, modalities=("slo", "oct", "note"))
    prior = np.log(PROFILES["fairvision"]["glaucoma"] / (1 - PROFILES["fairvision"]["glaucoma"]))
    assert np.allclose(ev["oct"], prior) and np.allclose(ev["note"], prior)   # decoys: no evidence
    assert np.allclose(ev["all"], ev["slo"])
    full = synthesize_metadata("fairvision", 2000, seed=3)
    ev = evidence("fairvision", full, pos, modalities=("note",))["note"]
    lr = np.log((1 - NOTE_LABEL_NOISE) / NOTE_LABEL_NOISE)
    assert np.allclose(ev, prior + np.where(pos, lr, -lr))                     # hand-worked


def test_ceiling_command(fresh_dataset, tmp_path, capsys):
    root = fresh_dataset(n_train=8, n_val=8, n_test=120, seed=4)   # the command writes beside it
    assert main(["ceiling", "--data-root", str(root), "--attribute", "race"]) == 0
    assert "ES-AUC" in capsys.readouterr().out
    result = json.loads((root / "ceiling_race_test.json").read_text())
    rows = read_side_file(root, "test")
    y = np.array([int(r["glaucoma"]) for r in rows])
    g = np.array([int(r["race"]) for r in rows])
    ev = np.array([float(r["evidence_oct"]) for r in rows])
    white = g == 2
    assert result["readers"]["oct"]["auc"] == pytest.approx(roc_auc_score(y, ev))
    assert result["readers"]["oct"]["group_auc"]["white"] == pytest.approx(
        roc_auc_score(y[white], ev[white]))
    assert set(result["readers"]) == {"slo", "oct", "all"}
    assert not any(p.name == "ideal_reader.csv" for p in (root / "Glaucoma").rglob("*"))
    assert main(["ceiling", "--data-root", str(tmp_path), "--attribute", "race"]) == 2


# ----------------------------------------------------------------------------- the shifted site

def test_shifted_site_evidence_is_its_calibrated_posterior():
    """The shifted site's reader knows that site's group mix: calibrated on samples drawn there,
    and the same-site reader (the published mix) is not (a test that can fail)."""
    meta = synthesize_metadata("fairvision", 40_000, seed=12, site="shifted")
    ev = evidence("fairvision", meta, modalities=("slo", "oct"), site="shifted")
    for reader in ("oct", "all"):
        assert _calibration_gap(meta["glaucoma"], ev[reader]) < 0.025
    wrong = evidence("fairvision", meta, modalities=("oct",))["oct"]
    assert not np.allclose(wrong, ev["oct"])


def test_ceiling_command_reports_the_shifted_site(fresh_dataset, tmp_path, capsys):
    same = fresh_dataset(n_train=8, n_val=8, n_test=150, seed=4)
    other = fresh_dataset(n_train=8, n_val=8, n_test=150, seed=4, site="shifted")
    out = tmp_path / "ceiling.json"
    assert main(["ceiling", "--data-root", str(same), "--shift-root", str(other),
                 "--attribute", "race", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "site default" in printed and "site shifted" in printed
    result = json.loads(out.read_text())
    assert result["site"] == "default" and result["shift"]["site"] == "shifted"
    rows = read_side_file(other, "test")
    y = np.array([int(r["glaucoma"]) for r in rows])
    ev = np.array([float(r["evidence_all"]) for r in rows])
    assert result["shift"]["readers"]["all"]["auc"] == pytest.approx(roc_auc_score(y, ev))
    assert result["shift"]["n"] == 150
    assert json.loads((other / "site.json").read_text())["scanner"]["resolution"] == 0.5
    assert not (same / "site.json").exists()
