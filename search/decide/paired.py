"""The paired test's statistics: a candidate against the study's reference (plain fusion, or
CLIP for the vision-language family: search.record.reference), paired over test samples. The
predictions come from search.decide.scoring.deployed_test, the one scoring path.

Both models score the same test samples; each bootstrap resample draws sample indices once and
evaluates BOTH models on them, so the interval is for the difference on the same patients
(paired), not two independent intervals. Metrics: AUC, ES-AUC, worst-group AUC (the lowest defined
group AUC: a group left with one class, in the test split or a resample, is left out of it as of
ES-AUC, trainer/metrics.py). Intervals: 95% percentile intervals over
`n` resamples (numpy Generator(seed)); undefined resamples are dropped and counted.
The resample metrics are the trainer's vectorised ones (trainer.metrics, equal to
evaluate_fairness on each resample); tests/search/decide/test_paired.py checks them by brute force.
"""
from __future__ import annotations

import math

import numpy as np

KEYS = ("auc", "es_auc", "worst_group_auc")


def _per_resample(y, p, g, weights, table) -> dict[str, np.ndarray]:
    from trainer.metrics import _resample_metrics

    m = _resample_metrics(y, p, g, weights, 0.5, table)
    return {key: m[key] for key in KEYS}


def point_metrics(y, p, g, group_names=None) -> dict:
    from trainer.metrics import evaluate_fairness

    r = evaluate_fairness(y, p, g, group_names=group_names)
    return {**{key: r[key] for key in KEYS}, "group_auc": r["group_auc"],
            "group_count": r["group_count"], "undefined_groups": r["undefined_groups"]}


def paired_bootstrap(y, p_base, p_chosen, g, n: int = 1000, seed: int = 0, group_names=None) -> dict:
    """{metric: {"baseline", "chosen", "diff" (point values), "diff_lo", "diff_hi",
    "baseline_lo/hi", "chosen_lo/hi", "n_valid"}} with diff = chosen - baseline."""
    from trainer.metrics import _check_inputs, _group_table

    y0, pa, ga = _check_inputs(y, p_base, g, 0.5, group_names)
    _, pb, _ = _check_inputs(y, p_chosen, g, 0.5, group_names)
    size = len(y0)
    draws = np.random.default_rng(seed).integers(0, size, size=(n, size))
    offsets = (np.arange(n) * size)[:, None]
    weights = np.bincount((draws + offsets).ravel(), minlength=n * size).reshape(n, size).astype(float)
    table = _group_table(ga, group_names)
    ra, rb = _per_resample(y0, pa, ga, weights, table), _per_resample(y0, pb, ga, weights, table)
    pt_a, pt_b = point_metrics(y0, pa, ga, group_names), point_metrics(y0, pb, ga, group_names)
    out = {"n_resamples": n, "n_test": size, "per_group": {"baseline": pt_a["group_auc"],
                                                          "chosen": pt_b["group_auc"],
                                                          "count": pt_a["group_count"]}}
    for key in KEYS:
        diff = rb[key] - ra[key]
        ok = ~np.isnan(diff)
        row = {"baseline": pt_a[key], "chosen": pt_b[key], "diff": pt_b[key] - pt_a[key],
               "n_valid": int(ok.sum())}
        for name, values in (("diff", diff), ("baseline", ra[key]), ("chosen", rb[key])):
            v = values[~np.isnan(values)]
            lo, hi = np.percentile(v, [2.5, 97.5]) if v.size else (math.nan, math.nan)
            row[f"{name}_lo"], row[f"{name}_hi"] = float(lo), float(hi)
        out[key] = row
    return out
