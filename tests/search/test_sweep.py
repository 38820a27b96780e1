"""The one-at-a-time sweep (search/sweep.py, `python -m search sweep`): its candidates, summary
and figure. Seconds, no Ray."""
import numpy as np
import pytest


def test_sweep_moves_one_hyperparameter_at_a_time_and_trains_the_centre_once():
    from search.record.space import HYPERPARAMETERS, RANGES
    from search.sweep import summarise, sweep_candidates, sweep_values

    centre = {"rho": 1.2, "lambda_gm": 0.15, "tau": 0.02, "delta": 0.6, "lambda_f": 0.6}
    cands = sweep_candidates(centre, "full", sweep_values(centre, 3))
    assert len(cands) == 1 + 5 * 3                       # 3 range points each, centre shared
    for label, c in cands.items():
        moved = [k for k in HYPERPARAMETERS if c[k] != centre[k]]
        assert len(moved) == (label != "centre")
        assert all(RANGES[k].low <= c[k] <= RANGES[k].high for k in HYPERPARAMETERS)
    runs = [{"candidate": k, "seed": s, "val": {"auc": 0.7 + 0.01 * s, "es_auc": 0.6}}
            for k in cands for s in (1, 2)]
    summary = summarise(runs, cands)
    assert [r["value"] for r in summary["delta"]] == sorted([0.05, 0.525, 1.0, 0.6])
    assert summary["tau"][0]["auc_sd"] == pytest.approx(np.std([0.71, 0.72], ddof=1))


def test_sweep_follows_the_study_s_method(tmp_path):
    """A comparison method's study sweeps that method's own searched hyperparameters (OGM-GE:
    ogm_alpha only), and its one-panel figure is drawn."""
    from search.record.space import RANGES, baseline_point, hyperparameters
    from search.sweep import plot, summarise, sweep_candidates, sweep_values

    names = hyperparameters("ogm_ge")
    centre = baseline_point("fairvision", "gender", "ogm_ge", "tiny")
    assert set(centre) == set(names) == {"ogm_alpha"}
    cands = sweep_candidates(centre, "ogm_ge", sweep_values(centre, 3, names))
    assert len(cands) == 1 + 3 and all(c["mode"] == "ogm_ge" for c in cands.values())
    assert all(RANGES["ogm_alpha"].low <= c["ogm_alpha"] <= RANGES["ogm_alpha"].high for c in cands.values())
    runs = [{"candidate": k, "seed": s, "val": {"auc": 0.7, "es_auc": 0.6 + 0.01 * s}}
            for k in cands for s in (1, 2)]
    summary = summarise(runs, cands, names)
    assert list(summary) == ["ogm_alpha"] and len(summary["ogm_alpha"]) == 4
    png, html = plot(summary, centre, tmp_path)
    assert png.stat().st_size > 0 and html.stat().st_size > 0

