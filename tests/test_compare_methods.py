"""benchmarks/compare_methods.py: paired statistics, verdicts and gap closed on hand-made rows."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from benchmarks import compare_methods as cm


def _rows(diffs, ref=0.70, oct_=0.60, joint=0.80):
    rows = []
    for seed, d in enumerate(diffs):
        base = ref + 0.01 * seed
        rows += [{"seed": seed, "attribute": "race", "method": "baseline", "auc": base,
                  "es_auc": base, "worst_auc": base},
                 {"seed": seed, "attribute": "race", "method": "m", "auc": base + d,
                  "es_auc": base + d, "worst_auc": base + d},
                 {"seed": seed, "attribute": "race", "method": "ideal oct", "worst_auc": oct_},
                 {"seed": seed, "attribute": "race", "method": "ideal all", "worst_auc": joint}]
    return rows


def test_paired_interval_is_scipys_and_verdicts_follow_it():
    diffs = [0.05, 0.06, 0.04, 0.05, 0.07]
    mean, low, high, n = cm.paired(_rows(diffs), "race", "m", "es_auc")
    base = 0.70 + 0.01 * np.arange(5)
    ci = stats.ttest_rel(base + diffs, base).confidence_interval(0.95)
    assert (mean, low, high, n) == pytest.approx((np.mean(diffs), ci.low, ci.high, 5))
    assert cm.verdict((mean, low, high, n)) == "better"
    assert cm.verdict(cm.paired(_rows([-0.05, -0.06, -0.04]), "race", "m", "es_auc")) == "worse"
    assert cm.verdict(cm.paired(_rows([0.05, -0.05, 0.01]), "race", "m", "es_auc")) \
        == "no detectable difference"


def test_gap_closed_hand_worked():
    # baseline worst 0.70..0.72, method +0.05 -> mean 0.76; OCT ideal 0.60, joint 0.80
    rows = _rows([0.04, 0.05, 0.06])
    assert cm.gap_closed(rows, "race", "m") == pytest.approx((0.76 - 0.60) / (0.80 - 0.60))
    assert "| m |" in cm.table(rows, "race", ["baseline", "m"])
