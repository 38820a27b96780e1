"""trainer.metrics: every value recomputed independently (sklearn, fairlearn, or by hand)."""
import json
import math

import numpy as np
import pytest
import torch
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from trainer.config import ATTRIBUTES
from trainer.metrics import (_group_table, _resample_metrics, batch_auc, bootstrap_fairness,
                             evaluate_fairness, group_auc_tensor, worst_group_auc)


def random_case(seed, n=600, num_groups=3, unknown=True, grid=None):
    """Labels, probabilities with group-dependent signal, codes (with some -1 when `unknown`)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(-1 if unknown else 0, num_groups, n)
    y = rng.integers(0, 2, n)
    signal = 0.15 + 0.1 * np.clip(g, 0, None)  # groups differ in how separable they are
    p = np.clip(0.5 + signal * (2 * y - 1) + rng.normal(0, 0.25, n), 0, 1)
    if grid:  # coarse grid: many ties, and many scores exactly at the 0.5 threshold
        p = np.round(p * grid) / grid
    return y, p, g


# ----------------------------------------------------------------------------- evaluate_fairness

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("grid", [None, 10])
def test_matches_sklearn_and_fairlearn_on_random_data(seed, grid):
    y, p, g = random_case(seed, grid=grid)
    r = evaluate_fairness(y, p, g)
    k = g != -1
    yk, pk, gk = y[k], p[k], g[k]
    assert r["n"] == k.sum()
    assert r["auc"] == pytest.approx(roc_auc_score(yk, pk), abs=1e-12)
    expected_gauc = {str(c): roc_auc_score(yk[gk == c], pk[gk == c]) for c in range(3)}
    assert r["group_auc"] == pytest.approx(expected_gauc, abs=1e-12)
    assert r["group_count"] == {str(c): int((gk == c).sum()) for c in range(3)}
    assert r["group_positive"] == {str(c): int(yk[gk == c].sum()) for c in range(3)}
    es = r["auc"] / (1 + sum(abs(a - r["auc"]) for a in expected_gauc.values()))
    assert r["es_auc"] == pytest.approx(es, abs=1e-12)
    assert r["worst_group_auc"] == pytest.approx(min(expected_gauc.values()), abs=1e-12)
    pred = (pk >= 0.5).astype(int)
    assert r["dpd"] == pytest.approx(demographic_parity_difference(yk, pred, sensitive_features=gk))
    assert r["deodds"] == pytest.approx(equalized_odds_difference(yk, pred, sensitive_features=gk))
    assert r["undefined_groups"] == []


def test_other_threshold_matches_fairlearn():
    y, p, g = random_case(3, grid=20)
    r = evaluate_fairness(y, p, g, threshold=0.65)
    k = g != -1
    pred = (p[k] >= 0.65).astype(int)
    yk, gk = y[k], g[k]
    assert r["dpd"] == pytest.approx(demographic_parity_difference(yk, pred, sensitive_features=gk))
    assert r["deodds"] == pytest.approx(equalized_odds_difference(yk, pred, sensitive_features=gk))


def test_hand_worked_example():
    # group 0 (female): y = 1 1 0 0, p = .9 .4 .6 .2
    #   AUC: pos {.9,.4} vs neg {.6,.2}: .9 wins 2, .4 wins 1 (over .2)         -> 3/4  = 0.75
    #   pred (p >= .5) = 1 0 1 0: selection 2/4 = .5, TPR 1/2, FPR 1/2
    # group 1 (male):   y = 1 0 1 0, p = .8 .5 .5 .3
    #   AUC: pos {.8,.5} vs neg {.5,.3}: .8 wins 2, .5 ties .5 (1/2) + wins .3  -> 3.5/4 = 0.875
    #   pred = 1 1 1 0: selection 3/4, TPR 2/2, FPR 1/2 (the .5 negative is predicted positive)
    # overall: pos {.9,.4,.8,.5} vs neg {.6,.2,.5,.3}: 4 + 2 + 4 + 2.5        -> 12.5/16 = 25/32
    # es_auc = (25/32) / (1 + |.75 - .78125| + |.875 - .78125|) = (25/32) / (9/8) = 25/36
    # dpd = .75 - .5 = .25; TPR gap = 1 - .5 = .5, FPR gap = 0 -> deodds = .5
    # The ninth sample (group -1, a positive scored 0) would lower every AUC if it were counted.
    y = [1, 1, 0, 0, 1, 0, 1, 0, 1]
    p = [.9, .4, .6, .2, .8, .5, .5, .3, 0.0]
    g = [0, 0, 0, 0, 1, 1, 1, 1, -1]
    r = evaluate_fairness(y, p, g, group_names=ATTRIBUTES["gender"])
    assert r["n"] == 8
    assert r["group_auc"] == {"female": 0.75, "male": 0.875}
    assert r["group_count"] == {"female": 4, "male": 4}
    assert r["group_positive"] == {"female": 2, "male": 2}
    assert r["auc"] == pytest.approx(25 / 32, abs=1e-12)
    assert r["es_auc"] == pytest.approx(25 / 36, abs=1e-12)
    assert r["dpd"] == pytest.approx(0.25, abs=1e-12)
    assert r["deodds"] == pytest.approx(0.5, abs=1e-12)
    # at threshold .7 each group predicts exactly its top positive: selection 1/4, TPR 1/2, FPR 0
    r7 = evaluate_fairness(y, p, g, threshold=0.7, group_names=ATTRIBUTES["gender"])
    assert (r7["dpd"], r7["deodds"]) == (0.0, 0.0)


def test_score_equal_to_threshold_is_positive():
    # group 0 predicts [1, 0] only if .5 >= .5 counts as positive: selection 1/2 vs 0 -> dpd .5
    r = evaluate_fairness([1, 0, 1, 0], [.5, .1, .4, .1], [0, 0, 1, 1])
    assert r["dpd"] == 0.5


def test_unknown_group_excluded_everywhere():
    y, p, g = random_case(4)
    k = g != -1
    with_unknown = evaluate_fairness(y, p, g)
    without = evaluate_fairness(y[k], p[k], g[k])
    assert with_unknown == without
    assert "-1" not in with_unknown["group_auc"]
    assert with_unknown["auc"] != pytest.approx(roc_auc_score(y, p), abs=1e-9)


def test_one_class_group_is_nan_with_count_and_left_out_of_es_auc():
    y, p, g = random_case(5, unknown=False)
    y, p, g = np.r_[y, 0, 0, 0], np.r_[p, .9, .1, .4], np.r_[g, 3, 3, 3]  # group 3: negatives only
    r = evaluate_fairness(y, p, g)
    assert math.isnan(r["group_auc"]["3"])
    assert r["group_count"]["3"] == 3 and r["group_positive"]["3"] == 0
    assert r["undefined_groups"] == ["3"]
    auc = roc_auc_score(y, p)
    defined = [roc_auc_score(y[g == c], p[g == c]) for c in range(3)]
    assert r["es_auc"] == pytest.approx(auc / (1 + sum(abs(a - auc) for a in defined)), abs=1e-12)
    assert r["worst_group_auc"] == pytest.approx(min(defined), abs=1e-12)
    json.dumps(r)  # NaN is allowed; everything else is a python number / str


def test_undefined_group_one_treatment_hand_worked_and_fairlearn():
    """One treatment of an undefined group: NaN AUC with its count, out of the ES-AUC sum and out
    of the worst-group minimum; the same in the bootstrap and the paired test's resamples.
    group a: y 0 0 1 1, p .1 .4 .35 .8: pos {.35, .8} vs neg {.1, .4}: 1 + 2 wins   -> 3/4
    group b: y 0 1 1,   p .2 .6 .9:     every positive above the negative           -> 1
    group c: y 1 1,     p .3 .7:        positives only: undefined (NaN), count 2
    overall: 6 pos vs 3 neg {.1, .4, .2}: .35 2, .8 3, .6 3, .9 3, .3 2, .7 3 = 16/18  -> 8/9
    es_auc = (8/9) / (1 + |3/4 - 8/9| + |1 - 8/9|) = (8/9) / (1 + 5/36 + 4/36) = 32/45
    worst_group_auc = min(3/4, 1) = 3/4 (group c left out: not NaN, not 0)"""
    y = np.array([0, 0, 1, 1, 0, 1, 1, 1, 1])
    p = np.array([.1, .4, .35, .8, .2, .6, .9, .3, .7])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    names = {0: "a", 1: "b", 2: "c"}
    r = evaluate_fairness(y, p, g, group_names=names)
    assert r["auc"] == pytest.approx(8 / 9, abs=1e-12)
    assert r["group_auc"]["a"] == 0.75 and r["group_auc"]["b"] == 1.0
    assert math.isnan(r["group_auc"]["c"]) and r["group_count"]["c"] == 2
    assert r["undefined_groups"] == ["c"]
    assert r["es_auc"] == pytest.approx(32 / 45, abs=1e-12)
    assert r["worst_group_auc"] == 0.75
    # fairlearn's MetricFrame over sklearn's AUC (NaN for the one-class group): same groups, and
    # its group_min skips the undefined group as we do
    with pytest.warns(UndefinedMetricWarning):
        frame = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=p,
                            sensitive_features=[names[c] for c in g])
    assert frame.by_group.to_dict() == pytest.approx(r["group_auc"], nan_ok=True)
    assert frame.group_min() == r["worst_group_auc"] and frame.overall == r["auc"]
    # the bootstrap's vectorised resamples: the whole sample drawn once == evaluate_fairness
    once = _resample_metrics(y, p, g, np.ones((1, len(y))), 0.5, _group_table(g, names))
    assert once["worst_group_auc"][0] == 0.75
    assert once["es_auc"][0] == pytest.approx(32 / 45, abs=1e-12)
    assert math.isnan(once["auc/c"][0])
    from search.decide.paired import point_metrics
    assert point_metrics(y, p, g, names)["worst_group_auc"] == 0.75


def test_worst_group_auc_of_nothing_defined_is_nan():
    assert math.isnan(worst_group_auc({"a": math.nan, "b": math.nan}))
    np.testing.assert_equal(worst_group_auc(np.array([[0.6, np.nan], [np.nan, np.nan]])),
                            [0.6, np.nan])


def test_no_defined_group_gives_nan_es_auc():
    r = evaluate_fairness([1, 1, 0, 0], [.9, .8, .3, .2], [0, 0, 1, 1])
    assert r["auc"] == 1.0 and math.isnan(r["es_auc"]) and math.isnan(r["worst_group_auc"])
    assert r["undefined_groups"] == ["0", "1"]


def test_deodds_leaves_out_groups_without_positives_unlike_fairlearn():
    # group 1 has no positive: its TPR is undefined. fairlearn counts it as 0 (TPR gap .5 - 0);
    # we leave it out, so the TPR gap is 0 and only the FPR gap (0 here) remains.
    y, pred, g = [1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]
    assert evaluate_fairness(y, pred, g)["deodds"] == 0.0
    assert equalized_odds_difference(y, pred, sensitive_features=g) == 0.5


def test_group_names_give_stable_keys_even_for_absent_groups():
    y, p, g = random_case(6, num_groups=2)
    r = evaluate_fairness(y, p, g, group_names=ATTRIBUTES["race"])  # no "white" (code 2) present
    assert list(r["group_auc"]) == ["asian", "black", "white"]
    assert r["group_count"]["white"] == 0 and math.isnan(r["group_auc"]["white"])
    k = g != -1
    assert r["group_auc"]["black"] == pytest.approx(roc_auc_score(y[k][g[k] == 1], p[k][g[k] == 1]))


def test_torch_and_list_inputs_equal_numpy():
    y, p, g = random_case(7)
    ref = evaluate_fairness(y, p, g)
    assert evaluate_fairness(torch.tensor(y, dtype=torch.float32), torch.tensor(p),
                             torch.tensor(g)) == ref
    assert evaluate_fairness(y.tolist(), p.tolist(), g.tolist()) == ref
    assert all(type(ref[k]) is float for k in ("auc", "es_auc", "worst_group_auc", "dpd", "deodds"))


@pytest.mark.parametrize("y, p, g, message", [
    ([1, 0, 1], [.5, .5], [0, 1, 0], "length mismatch"),
    ([1, 0, 1, 0], [.5, 1.2, .5, .5], [0, 0, 1, 1], r"y_prob\[1\] = 1.2"),
    ([1, 0, 1, 0], [.5, -.1, .5, .5], [0, 0, 1, 1], r"y_prob\[1\] = -0.1"),
    ([1, 0, 1, 0], [.5, .5, float("nan"), .5], [0, 0, 1, 1], r"y_prob\[2\] = nan"),
    ([1, 0, 2, 0], [.5, .5, .5, .5], [0, 0, 1, 1], r"y_true\[2\] = 2"),
    ([1, 0, 1, 0], [.5, .5, .5, .5], [0, 0, 0, -1], "at least 2 groups"),
    ([1, 1, 1, 0], [.5, .5, .5, .5], [0, 0, 1, -1], "only label 1"),
    ([1, 0, 1, 0], [.5, .5, .5, .5], [0, 0, 1, -2], r"groups\[3\] = -2"),
    ([1, 0, 1, 0], [.5, .5, .5, .5], [0, 0, 1.5, 1], "integer codes"),
])
def test_invalid_inputs_are_refused(y, p, g, message):
    with pytest.raises(ValueError, match=message):
        evaluate_fairness(y, p, g)
    with pytest.raises(ValueError, match=message):
        bootstrap_fairness(y, p, g, n=2)


def test_unknown_code_for_named_groups_is_refused():
    with pytest.raises(ValueError, match=r"groups\[2\] = 5 .*known codes: \[0, 1\]"):
        evaluate_fairness([1, 0, 1, 0], [.5] * 4, [0, 1, 5, 1], group_names=ATTRIBUTES["gender"])


# ----------------------------------------------------------------------------- bootstrap

@pytest.mark.parametrize("grid", [None, 10])
def test_each_resample_equals_evaluate_on_that_resample(grid):
    y, p, g = random_case(8, n=300, grid=grid)
    k = g != -1
    y, p, g = y[k], p[k], g[k]
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(y), size=(5, len(y)))
    weights = np.stack([np.bincount(d, minlength=len(y)) for d in draws]).astype(float)
    table = _group_table(g, ATTRIBUTES["race"])
    got = _resample_metrics(y, p, g, weights, 0.5, table)
    for b, d in enumerate(draws):
        ref = evaluate_fairness(y[d], p[d], g[d], group_names=ATTRIBUTES["race"])
        for key in ("auc", "es_auc", "worst_group_auc", "dpd", "deodds"):
            assert got[key][b] == pytest.approx(ref[key], abs=1e-12), key
        for name, value in ref["group_auc"].items():
            assert got[f"auc/{name}"][b] == pytest.approx(value, abs=1e-12), name


def test_bootstrap_centres_on_full_sample_and_is_deterministic():
    y, p, g = random_case(9, n=3000)
    full = evaluate_fairness(y, p, g, group_names=ATTRIBUTES["race"])
    b = bootstrap_fairness(y, p, g, n=100, seed=0, group_names=ATTRIBUTES["race"])
    assert b["n_resamples"] == 100
    keys = {"auc", "es_auc", "worst_group_auc", "dpd", "deodds", "auc/asian", "auc/black",
            "auc/white"}
    assert set(b["mean"]) == set(b["std"]) == set(b["n_valid"]) == keys
    assert all(v == 100 for v in b["n_valid"].values())
    for key in ("auc", "es_auc"):
        assert abs(b["mean"][key] - full[key]) < 3 * b["std"][key] + 1e-3, key
    for name, value in full["group_auc"].items():
        assert abs(b["mean"][f"auc/{name}"] - value) < 3 * b["std"][f"auc/{name}"], name
    assert all(0 < s < 0.1 for s in b["std"].values())
    assert bootstrap_fairness(y, p, g, n=100, seed=0, group_names=ATTRIBUTES["race"]) == b
    assert bootstrap_fairness(y, p, g, n=100, seed=1, group_names=ATTRIBUTES["race"]) != b
    json.dumps(b)


def test_bootstrap_skips_resamples_where_a_metric_is_undefined():
    y, p, g = random_case(10, n=400, num_groups=2, unknown=False)
    # group 2: one positive (.5) between two negatives (.2, .6), often drawn without it, so its
    # AUC is undefined, 0, 1/2 or 1 by resample; group 3: negatives only, never defined.
    y, p, g = np.r_[y, 1, 0, 0, 0, 0], np.r_[p, .5, .2, .6, .3, .4], np.r_[g, 2, 2, 2, 3, 3]
    b = bootstrap_fairness(y, p, g, n=60, seed=3)
    assert 0 < b["n_valid"]["auc/2"] < 60
    assert b["n_valid"]["auc/3"] == 0
    assert math.isnan(b["mean"]["auc/3"]) and math.isnan(b["std"]["auc/3"])
    assert b["n_valid"]["auc"] == b["n_valid"]["es_auc"] == b["n_valid"]["worst_group_auc"] == 60
    # the reported mean is the mean over the valid resamples only, recomputed with sklearn
    draws = np.random.default_rng(3).integers(0, len(y), size=(60, len(y)))
    valid = [roc_auc_score(y[d][g[d] == 2], p[d][g[d] == 2]) for d in draws
             if len(set(y[d][g[d] == 2])) == 2]
    assert len(valid) == b["n_valid"]["auc/2"]
    assert b["mean"]["auc/2"] == pytest.approx(np.mean(valid), abs=1e-12)
    assert b["std"]["auc/2"] == pytest.approx(np.std(valid), abs=1e-12) and b["std"]["auc/2"] > 0


def test_bootstrap_refuses_bad_count():
    with pytest.raises(ValueError, match="n .*positive integer"):
        bootstrap_fairness([1, 0, 1, 0], [.5] * 4, [0, 0, 1, 1], n=0)


# ----------------------------------------------------------------------------- on-device AUC

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_auc_equals_sklearn_with_ties(seed):
    y, p, _ = random_case(seed, n=257, grid=8)  # heavy ties
    out = batch_auc(torch.tensor(p, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert out.dim() == 0 and out.dtype == torch.float32
    assert out.item() == pytest.approx(roc_auc_score(y, p.astype(np.float32)), abs=1e-6)


def test_batch_auc_mask_half_precision_and_one_class():
    y, p, _ = random_case(11, n=200)
    keep = np.arange(200) % 3 != 0
    scores = torch.tensor(p).half()
    out = batch_auc(scores, torch.tensor(y), torch.tensor(keep))
    ref = roc_auc_score(y[keep], scores.float().numpy()[keep])  # same fp16-rounded scores
    assert out.item() == pytest.approx(ref, abs=1e-6)
    assert torch.isnan(batch_auc(torch.rand(10), torch.ones(10)))
    assert torch.isnan(batch_auc(torch.rand(10), torch.tensor([1.0] + [0.0] * 9),
                                 torch.arange(10) > 0))


def test_group_auc_tensor_equals_sklearn_per_group():
    y, p, g = random_case(12, n=300, num_groups=4, grid=20)
    y, p, g = np.r_[y, 1, 1], np.r_[p, .3, .6], np.r_[g, 4, 4]  # group 4: positives only
    out = group_auc_tensor(torch.tensor(p), torch.tensor(y), torch.tensor(g), num_groups=6)
    assert out.shape == (6,) and out.dtype == torch.float32
    for c in range(4):
        assert out[c].item() == pytest.approx(roc_auc_score(y[g == c], p[g == c]), abs=1e-6)
    assert torch.isnan(out[4]) and torch.isnan(out[5])  # one class; absent


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_helpers_run_on_cuda_without_host_sync():
    y, p, g = random_case(13, n=512)
    scores, labels, groups = (torch.tensor(a, device="cuda") for a in (p, y, g))
    torch.cuda.set_sync_debug_mode("error")  # any .item()/nonzero/host copy would raise
    try:
        auc = batch_auc(scores, labels)
        per_group = group_auc_tensor(scores, labels, groups, 3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert auc.device.type == "cuda" and per_group.device.type == "cuda"
    assert auc.item() == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    for c in range(3):
        assert per_group[c].item() == pytest.approx(roc_auc_score(y[g == c], p[g == c]), abs=1e-6)
