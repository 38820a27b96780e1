"""DPD / DEOdds at the validation-chosen threshold, checked against fairlearn."""
from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from trainer.metrics import at_val_threshold, prevalence_threshold


def _case(seed, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    g = rng.integers(0, 3, n)
    p = 1 / (1 + np.exp(-(1.5 * y - 3 + 0.4 * g + rng.normal(0, 1, n))))  # all below 0.5 mostly
    return y, p, g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prevalence_rule_and_fairlearn(seed):
    y, p, g = _case(seed)
    t = prevalence_threshold(y, p)
    assert (p >= t).sum() == round(y.mean() * len(y))          # predicted share = prevalence
    r = at_val_threshold(y, p, g)
    pred = (p >= t).astype(int)
    assert r["threshold_val"] == t
    assert r["dpd_at_val_threshold"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=g))
    assert r["deodds_at_val_threshold"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=g))
    assert r["dpd_at_val_threshold"] > 0                       # at 0.5 almost nobody is positive


def test_given_threshold_is_used_as_is():
    """The test split reuses the validation threshold; it is not re-chosen on test."""
    (yv, pv, _), (yt, pt, gt) = _case(5), _case(6)
    t = prevalence_threshold(yv, pv)
    r = at_val_threshold(yt, pt, gt, threshold_val=t)
    pred = (pt >= t).astype(int)
    assert r["threshold_val"] == t != prevalence_threshold(yt, pt)
    assert r["dpd_at_val_threshold"] == pytest.approx(
        demographic_parity_difference(yt, pred, sensitive_features=gt))
