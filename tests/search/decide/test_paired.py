"""The paired bootstrap against plain fusion, checked by brute force (sklearn on every resample),
the confirmation rule, the front, and the confirmation's folds. Seconds."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from search.decide.confirm import BASELINE, choose, candidate_stats
from search.decide.select import front
from search.decide.paired import paired_bootstrap

NAMES = {0: "female", 1: "male"}


def brute_force(y, p, g, idx):
    """AUC, ES-AUC and worst-group AUC of one resample, straight from the definitions: a group
    with one class has no AUC and is left out of both summaries."""
    y, p, g = y[idx], p[idx], g[idx]
    auc = roc_auc_score(y, p)
    groups = []
    for code in NAMES:
        m = g == code
        groups.append(roc_auc_score(y[m], p[m]) if 0 < y[m].sum() < m.sum() else math.nan)
    defined = [a for a in groups if not math.isnan(a)]
    es_auc = auc / (1 + sum(abs(a - auc) for a in defined)) if defined else math.nan
    return auc, es_auc, min(defined) if defined else math.nan


def test_paired_bootstrap_equals_brute_force():
    rng = np.random.default_rng(3)
    n, resamples = 90, 150
    y = rng.integers(0, 2, n)
    g = rng.integers(0, 2, n)
    p_base = np.clip(0.3 * y + rng.normal(0.35, 0.25, n), 0, 1).round(2)   # rounded: ties count 1/2
    p_chosen = np.clip(0.45 * y + rng.normal(0.3, 0.2, n) - 0.1 * g, 0, 1)
    out = paired_bootstrap(y, p_base, p_chosen, g, n=resamples, seed=7, group_names=NAMES)

    draws = np.random.default_rng(7).integers(0, n, size=(resamples, n))   # the same resamples
    a = np.array([brute_force(y, p_base, g, d) for d in draws])
    b = np.array([brute_force(y, p_chosen, g, d) for d in draws])
    for j, key in enumerate(("auc", "es_auc", "worst_group_auc")):
        diff = b[:, j] - a[:, j]
        diff = diff[~np.isnan(diff)]
        assert out[key]["n_valid"] == len(diff)
        lo, hi = np.percentile(diff, [2.5, 97.5])
        assert out[key]["diff_lo"] == pytest.approx(lo, abs=1e-9)
        assert out[key]["diff_hi"] == pytest.approx(hi, abs=1e-9)
        whole = np.arange(n)
        assert out[key]["diff"] == pytest.approx(brute_force(y, p_chosen, g, whole)[j]
                                                 - brute_force(y, p_base, g, whole)[j], abs=1e-12)
    assert out["auc"]["diff_lo"] < out["auc"]["diff"] < out["auc"]["diff_hi"]


def _runs(values):
    return [{"candidate": c, "seed": s, "val": {"auc": a, "es_auc": e}} for c, s, a, e in values]


def test_choice_applies_the_rule_under_the_auc_floor_and_reports_the_seed_paired_gap():
    """The confirmation's runs become the rule's table (repeat = seed): a candidate shown better
    than plain fusion (Holm-adjusted one-sided paired t) is deployed; the AUC floor excludes the
    fairest one whose AUC falls too far."""
    from scipy.stats import ttest_rel

    runs = _runs([(BASELINE, 1, 0.80, 0.70), (BASELINE, 2, 0.82, 0.72), (BASELINE, 3, 0.81, 0.71),
                  ("a", 1, 0.70, 0.80), ("a", 2, 0.72, 0.82), ("a", 3, 0.71, 0.815),  # fairest, AUC far below
                  ("b", 1, 0.81, 0.755), ("b", 2, 0.80, 0.785), ("b", 3, 0.80, 0.765)])
    stats = candidate_stats(runs)
    assert stats["b"]["es_auc"] == pytest.approx(0.7683333) and stats["b"]["n_seeds"] == 3
    assert choose(runs, None)["label"] == "a"
    pick = choose(runs, 0.02)
    assert pick["label"] == "b" and pick["auc_floor"] == pytest.approx(0.79)
    b, base = [0.755, 0.785, 0.765], [0.70, 0.72, 0.71]   # sd of b - base above SD_FLOOR
    ev = pick["evidence"]["candidates"]
    assert ev["b"]["p"] == pytest.approx(ttest_rel(b, base, alternative="greater").pvalue)
    assert ev["b"]["p_holm"] == pytest.approx(min(1, 2 * ev["b"]["p"]) if ev["b"]["p"] < ev["a"]["p"]
                                              else max(ev["a"]["p_holm"], ev["b"]["p"]))
    ci = ttest_rel(b, base).confidence_interval(0.95)
    assert pick["vs_baseline_val"]["es_auc_lo"] == pytest.approx(ci.low)
    assert ev["b"]["diff_lo"] == pytest.approx(ci.low)
    assert choose(runs, 0.0)["fell_back_to_baseline"]          # both below plain fusion's AUC
    assert "shown better than plain fusion" in pick["reason"]


def test_plain_fusion_is_deployed_when_no_candidate_is_shown_better():
    """A best mean above plain fusion's is not enough (the old rule deployed it): with 2 seeds
    and these spreads nothing is shown better, and the decision says so in one line, naming
    the best candidate with its interval and Holm p."""
    runs = _runs([(BASELINE, 1, 0.80, 0.76), (BASELINE, 2, 0.82, 0.78),
                  ("a", 1, 0.78, 0.70), ("a", 2, 0.79, 0.74),
                  ("b", 1, 0.81, 0.80), ("b", 2, 0.80, 0.76)])   # b's mean 0.78 > 0.77
    pick = choose(runs, None)
    assert pick["label"] == BASELINE and pick["fell_back_to_baseline"]
    assert pick["best_candidate"] == "b"
    assert pick["vs_baseline_val"]["es_auc"] == pytest.approx(((0.80 - 0.76) + (0.76 - 0.78)) / 2)
    assert pick["reason"].startswith("plain fusion: no candidate shown better (best: b, +0.010")
    assert "Holm" in pick["rule"]


def test_the_summary_never_prints_an_impossible_gain(capsys):
    """make demo's table (2 seeds): the gain 2 repeats detect is above 1 - plain fusion's ES-AUC;
    the summary says no achievable gain is detectable and prints no figure above the headroom."""
    import re

    from search.record.summary import print_evidence

    runs = _runs([(BASELINE, 1, 0.80, 0.76), (BASELINE, 2, 0.82, 0.78),
                  ("a", 1, 0.78, 0.70), ("a", 2, 0.79, 0.74), ("b", 1, 0.81, 0.80), ("b", 2, 0.80, 0.76)])
    print_evidence(choose(runs, None))
    out = capsys.readouterr().out
    assert "with 2 repeats no achievable gain is detectable" in out and "detects no achievable gain" in out
    headroom = 1 - 0.77
    gains = [float(g) for g in re.findall(r"detects? ([+-][0-9.]+)", out)]
    assert gains and all(g <= headroom for g in gains), out
    assert "within-seed correlation plain fusion - candidates: needs 3+ repeats" in out


def test_a_nan_score_in_the_confirmation_is_one_decision_line_not_a_crash(capsys):
    """A confirmation run whose validation ES-AUC is undefined (NaN: a group with one class):
    the rule cannot read the table, so there is no decision: one line naming the run, nothing
    deployed, tested or registered, and the summary prints that line alone."""
    from search.decide.stage import _test_and_register
    from search.record.summary import print_evidence

    runs = _runs([(BASELINE, 1, 0.80, 0.70), (BASELINE, 2, 0.82, 0.72),
                  ("a", 1, 0.81, math.nan), ("a", 2, 0.80, 0.78)])
    choice = choose(runs, None)
    assert choice["error"] and choice["fell_back_to_baseline"] and choice["evidence"] == {}
    assert choice["reason"].startswith("no decision: confirmation: candidate 'a' repeat 1 has no finite")
    assert "\n" not in choice["reason"] and "nothing is deployed or registered" in choice["reason"]
    print_evidence(choice)
    assert capsys.readouterr().out == f"  decision: {choice['reason']}\n"
    decision = {}
    _test_and_register(None, {"choice": choice, "runs": runs, "seeds": [1, 2]}, None, decision)
    assert decision == {}     # no deployed run, no test, no registration


def test_front_is_the_non_dominated_set():
    trials = [{"trial_id": k, "val": {"auc": a, "es_auc": e}}
              for k, a, e in [("p", 0.9, 0.6), ("q", 0.8, 0.7), ("r", 0.7, 0.65), ("s", 0.85, 0.7)]]
    assert [t["trial_id"] for t in front(trials)] == ["s", "p"]


def test_confirm_folds_give_each_repeat_its_own_cut_of_train_and_val():
    """--confirm-folds K: the confirmation's r-th seed trains with resplit_folds K, resplit_fold r
    (trainer/data/resplit.py), every candidate of a repeat on the same cut; without it, the
    trial config is the given split's."""
    from search.run.trainable import resolve, trial_config
    from trainer.config import make_config

    base = make_config("fairvision", "gender", preset="tiny").to_dict()
    setup = {"candidates": {"a": {"mode": "full", "rho": 1.1}, BASELINE: {"mode": "baseline"}},
             "resplit": {"folds": 3, "first_seed": 11}}
    for label in ("a", BASELINE):
        cfg = trial_config(resolve({"candidate": label, "seed": 15}, setup), base)
        assert (cfg.seed, cfg.resplit_folds, cfg.resplit_fold) == (15, 3, 4)   # fold 1 of partition 1
    plain = trial_config(resolve({"candidate": "a", "seed": 15}, {**setup, "resplit": None}), base)
    assert (plain.resplit_folds, plain.resplit_fold) == (0, 0)
