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


def test_std_over_seeds_is_the_sample_std():
    import statistics

    values = [0.70, 0.74, 0.69, 0.80, 0.72]
    rows = [{"seed": s, "attribute": "race", "method": "baseline", "auc": v, "es_auc": v,
             "worst_auc": v} for s, v in enumerate(values)]
    line = next(ln for ln in cm.table(rows, "race", ["baseline"]).splitlines()
                if ln.startswith("| baseline"))
    pct = [100 * v for v in values]
    assert f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f}" in line   # ddof=1
    assert cm.mean_std([0.5]) == "50.0"                     # one seed: no spread to report
    assert cm.mean_std([0.5, float("nan"), 0.7]) == f"60.0 ± {statistics.stdev([50, 70]):.1f}"


def test_committed_reports_rerender_from_their_json():
    """Every committed compare-*.md is what --render makes of the .json beside it, so a figure
    in the docs traces to the raw rows through one command."""
    import json
    from pathlib import Path

    results = Path(cm.__file__).resolve().parent / "results"
    pairs = sorted(results.glob("compare-*.json"))
    assert pairs
    for path in pairs:
        md = path.with_suffix(".md").read_text()
        assert cm.report(json.loads(path.read_text())) + "\n" == md, path.name


def test_brief_report_adds_each_tuned_setting():
    rows = _rows([0.04, 0.05, 0.06])
    data = {"args": {"seeds": [0, 1, 2], "tune": 8, "methods": ["baseline", "m"],
                     "attributes": ["race"], "n_train": 1, "n_val": 1, "n_test": 1,
                     "preset": "tiny", "epochs": 8},
            "tuned_sets": {"m|race": ["lr=0.000156475", "mode_x=abc"], "baseline|race": []},
            "rows": rows}
    text = cm.report(data, brief=True)
    assert "| chosen setting |" in text and "lr=0.000156, mode_x=abc |" in text
    assert "DPD@thr" not in text


def _robust_rows(drops, shift_gap):
    """Baseline and method m over seeds: m loses `drops[i]` without the OCT (baseline loses 0.20),
    and is `shift_gap[i]` above baseline on the shifted site."""
    rows = []
    for seed, (d, s) in enumerate(zip(drops, shift_gap)):
        base = 0.80 + 0.01 * seed
        rows += [{"seed": seed, "attribute": "race", "method": "baseline", "auc": base,
                  "es_auc": base, "es_auc@no_oct": base - 0.20, "es_auc@shift": base - 0.10},
                 {"seed": seed, "attribute": "race", "method": "m", "auc": base, "es_auc": base,
                  "es_auc@no_oct": base - d, "es_auc@shift": base - 0.10 + s}]
    return rows


def test_robustness_changes_and_differences_are_scipys_paired_intervals():
    drops, gaps = [0.05, 0.07, 0.04, 0.06], [0.02, -0.01, 0.03, 0.00]
    rows = _robust_rows(drops, gaps)
    assert cm.conditions(rows) == ["no_oct", "shift"]
    base = 0.80 + 0.01 * np.arange(4)
    ci = stats.ttest_rel(base - drops, base).confidence_interval(0.95)
    assert cm.degrade(rows, "race", "m", "no_oct") == pytest.approx(
        (-np.mean(drops), ci.low, ci.high, 4))
    assert cm.degrade(rows, "race", "baseline", "no_oct")[0] == pytest.approx(-0.20)
    # without the OCT, m (drops of 4-7 points) is better than baseline (20 points)
    assert cm.verdict(cm.paired(rows, "race", "m", "es_auc@no_oct")) == "better"
    assert cm.verdict(cm.paired(rows, "race", "m", "es_auc@shift")) == "no detectable difference"
    text = "\n".join(cm.robustness(rows, "race", ["baseline", "m"]))
    assert "ES-AUC OCT missing" in text and "ES-AUC shifted site" in text
    assert "- m (race, OCT missing): better than baseline" in text
    # the report adds the section only when the rows hold a condition (committed ones do not)
    data = {"args": {"seeds": [0, 1, 2, 3], "methods": ["baseline", "m"], "attributes": ["race"],
                     "n_train": 1, "n_val": 1, "n_test": 1, "preset": "tiny", "epochs": 1},
            "rows": rows}
    assert "deployment conditions" in cm.report(data)
    data["rows"] = _rows([0.01, 0.02, 0.03])
    assert "deployment conditions" not in cm.report(data)


def test_fairvlmed_methods_pair_with_clip_and_vl_robustness_reads_the_note_as_unused():
    """Issue 28: --reference clip pairs every method with clip; fairclip_aligned is fairclip with
    the aligned variant; a VL fit's "note missing" equals its complete test, and its "SLO
    removed" block is dropped."""
    import argparse

    args = argparse.Namespace(dataset="fairvlmed", preset="tiny", epochs=1, out="/tmp/x", set=[],
                              robustness=False)
    cfg = cm._config(args, "/tmp/x/data", "gender", "fairclip_aligned", 3)
    assert (cfg.mode, cfg.fairclip_variant, cfg.dataset, cfg.seed) == \
        ("fairclip", "aligned", "fairvlmed", 3)
    assert cm._is_vl("fairclip_aligned") and cm._is_vl("dualfairvl") and not cm._is_vl("full")
    point = {"auc": 0.7, "es_auc": 0.6, "group_auc": {"female": 0.6, "male": 0.8}}
    test = {"point": point, "missing": {"slo": {"removed": {**point, "auc": 0.7}}}}
    robust = cm._robust_row(cm._vl_missing(test))
    assert robust["es_auc@no_note"] == 0.6 and not any(k.endswith("@no_slo") for k in robust)
    rows = [{**r, "method": {"baseline": "clip", "m": "fairclip"}.get(r["method"], r["method"])}
            for r in _rows([0.04, 0.05, 0.06])]
    lines = cm.verdict_lines(rows, "race", ["clip", "fairclip"], ref="clip", auc=True)
    assert len(lines) == 1 and lines[0].startswith("- fairclip (race): better than clip in ES-AUC")
    assert "AUC +5.0" in lines[0]
    assert "| clip |" in cm.table(rows, "race", ["clip", "fairclip"], ref="clip")
