"""The deployment rule (search/decide/rule.py) on hand-made tables: p-values and intervals against
scipy computed here, Holm worked by hand, the decision, the one-line refusals and the CLI. Seconds."""
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from search.decide.rule import (PLANNING_SD, SD_FLOOR, BadTable, decide_table, holm, min_detectable,
                                one_sided_p)

from tests.search.conftest import subprocess_env

BASE = [0.70, 0.72, 0.71, 0.69]
VALUES = {"baseline": BASE,
          "clear": [0.76, 0.79, 0.775, 0.745],     # about +0.06 every seed (sd 0.0065 > SD_FLOOR)
          "noisy": [0.80, 0.66, 0.78, 0.70],       # mean above baseline's, not shown better
          "worse": [0.69, 0.70, 0.70, 0.68]}


def table(values=VALUES, auc=None):
    auc = auc or {}
    return pd.DataFrame([{"candidate": c, "repeat": r, "val_es_auc": v, "val_auc": auc.get(c, 0.8)}
                         for c, vs in values.items() for r, v in enumerate(vs, start=1)])


def test_p_values_and_intervals_equal_scipy_paired_t():
    d = decide_table(table())
    base = np.array(BASE)
    raw = {}
    for c in ("clear", "noisy", "worse"):
        x = np.array(VALUES[c])
        ref = stats.ttest_rel(x, base, alternative="greater")
        ci = stats.ttest_rel(x, base).confidence_interval(0.95)
        row = d["candidates"][c]
        raw[c] = ref.pvalue
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["diff"] == pytest.approx((x - base).mean())
        assert (row["diff_lo"], row["diff_hi"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # Holm over the three, by the definition
    order = sorted(raw, key=raw.get)
    running = 0.0
    for i, c in enumerate(order):
        running = max(running, min(1.0, (3 - i) * raw[c]))
        assert d["candidates"][c]["p_holm"] == pytest.approx(running)
    assert d["deployed"] == "clear" and d["candidates"]["clear"]["shown_better"]
    assert not d["candidates"]["noisy"]["shown_better"]
    assert np.mean(VALUES["noisy"]) > np.mean(BASE)          # the old mean-above rule's pick...
    assert "clear: shown better than baseline" in d["reason"]


def test_min_gain_shifts_the_null():
    x, base = np.array(VALUES["clear"]), np.array(BASE)
    d = decide_table(table(), min_gain=0.05)
    ref = stats.ttest_1samp(x - base - 0.05, 0.0, alternative="greater").pvalue
    assert d["candidates"]["clear"]["p"] == pytest.approx(ref, rel=1e-9)
    assert decide_table(table(), min_gain=0.07)["deployed"] == "baseline"    # +0.06 is not > 0.07


def test_holm_by_hand():
    # p sorted 0.01, 0.03, 0.04 (m = 3): 3 x 0.01 = 0.03; max(0.03, 2 x 0.03) = 0.06;
    # max(0.06, 1 x 0.04) = 0.06; back in the input order:
    assert holm(np.array([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert holm(np.array([0.5, 0.02])) == pytest.approx([0.5, 0.04])
    assert holm(np.array([[0.9, 0.6]]))[0] == pytest.approx([1.0, 1.0])      # capped at 1


def test_no_candidate_shown_better_deploys_the_baseline_and_says_why():
    values = {k: VALUES[k] for k in ("baseline", "noisy", "worse")}
    d = decide_table(table(values))
    assert d["deployed"] == "baseline" and d["best_candidate"] == "noisy"
    assert d["reason"].startswith("baseline: no candidate shown better")
    assert "noisy, +0." in d["reason"] and "Holm p=" in d["reason"]
    named = decide_table(table(values), baseline_name="plain fusion")
    assert named["reason"].startswith("plain fusion: no candidate shown better (best: noisy")


def test_among_several_shown_better_the_best_mean_and_the_auc_floor():
    values = {**VALUES, "better": [v + 0.02 for v in VALUES["clear"]]}
    d = decide_table(table(values))
    assert d["candidates"]["clear"]["shown_better"] and d["candidates"]["better"]["shown_better"]
    assert d["deployed"] == "better"
    floored = decide_table(table(values, auc={"baseline": 0.80, "better": 0.75}), min_auc_drop=0.02)
    assert floored["auc_floor"] == pytest.approx(0.78)
    assert not floored["candidates"]["better"]["eligible"] and floored["deployed"] == "clear"


def test_two_repeats_use_one_degree_of_freedom():
    values = {"baseline": [0.70, 0.72], "a": [0.80, 0.81]}
    d = decide_table(table(values))
    diffs = np.array([0.10, 0.09])
    t = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(2))
    assert d["candidates"]["a"]["p"] == pytest.approx(stats.t.sf(t, 1))
    assert d["candidates"]["a"]["p"] == pytest.approx(stats.ttest_rel([0.80, 0.81], [0.70, 0.72],
                                                                       alternative="greater").pvalue)


def test_one_repeat_is_decided_conservatively_with_a_warning():
    d = decide_table(table({"baseline": [0.7], "a": [0.9]}))
    assert d["deployed"] == "baseline" and d["candidates"]["a"]["p_holm"] == 1.0
    assert d["warnings"] and "1 repeat" in d["warnings"][0]
    assert one_sided_p(np.array([[0.1]])) == pytest.approx([1.0])


def test_min_detectable_gain_has_the_stated_power_by_simulation():
    sd, n, level = 0.03, 5, 0.05 / 3
    mdd = min_detectable(sd, n, level)
    rng = np.random.default_rng(0)
    diffs = rng.normal(mdd, sd, size=(20000, n))
    power = (one_sided_p(diffs) <= level).mean()
    assert power == pytest.approx(0.8, abs=0.015)
    assert min_detectable(sd, 2, level) > 5 * mdd         # two repeats detect only huge gains


@pytest.mark.parametrize("change, words", [
    (lambda df: df.drop(columns="val_auc"), "missing column(s) val_auc"),
    (lambda df: df[df.candidate != "baseline"], "no rows for the baseline 'baseline'"),
    (lambda df: df.drop(index=5), "repeats are not paired: candidate 'clear' lacks repeat(s) 2"),
    (lambda df: pd.concat([df, df.iloc[[0]]]), "'baseline' has repeat 1 twice"),
    (lambda df: df.assign(val_es_auc=df.val_es_auc.where(df.index != 3)), "no finite"),
])
def test_bad_tables_are_refused_in_one_line(change, words):
    with pytest.raises(BadTable) as err:
        decide_table(change(table()), name="runs.csv")
    assert words in str(err.value) and str(err.value).startswith("runs.csv: ") and "\n" not in str(err.value)


def test_cli_prints_one_json_line_per_table_and_refuses_a_bad_one(tmp_path):
    a, b, bad = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "bad.csv"
    table().to_csv(a, index=False)
    table({k: VALUES[k] for k in ("baseline", "noisy")}).to_csv(b, index=False)
    table().drop(columns="repeat").to_csv(bad, index=False)
    cmd = [sys.executable, "-m", "search.decide", "--alpha", "0.05"]
    out = subprocess.run(cmd + ["--table", str(a), str(b)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [d["table"] for d in lines] == [str(a), str(b)]
    assert [d["deployed"] for d in lines] == ["clear", "baseline"]
    assert set(lines[0]["candidates"]["clear"]) >= {"diff", "diff_lo", "diff_hi", "p_holm", "min_detectable_gain"}
    err = subprocess.run(cmd + ["--table", str(bad)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=120)
    assert err.returncode == 2 and err.stderr.strip().count("\n") == 0
    assert "missing column(s) repeat" in err.stderr


def test_holm_family_counts_candidates_no_longer_tested():
    """A candidate dropped by an earlier look counts in Holm's family with p = 1: the adjusted
    p of the others is what Holm gives with those ones added."""
    d2 = decide_table(table({k: VALUES[k] for k in ("baseline", "clear")}), family=3)
    p = d2["candidates"]["clear"]["p"]
    assert d2["candidates"]["clear"]["p_holm"] == pytest.approx(holm(np.array([p, 1.0, 1.0]))[0])
    assert d2["candidates"]["clear"]["p_holm"] == pytest.approx(min(1, 3 * p))
    assert d2["family"] == 3 and "all 3 candidate(s)" in d2["rule"]


def test_looks_split_the_budget_in_steps_of_the_first_look():
    from types import SimpleNamespace

    from search.decide.confirm import looks

    cfg = SimpleNamespace(seed=10, confirm_seeds=3, confirm_budget=7)
    assert looks(cfg) == [[11, 12, 13], [14, 15, 16], [17, 18, 19], [20]]
    assert looks(SimpleNamespace(seed=0, confirm_seeds=2, confirm_budget=0)) == [[1, 2]]


def test_zero_spread_never_deploys_a_tiny_gain():
    """A candidate exactly +0.001 above plain fusion in both of 2 repeats: without the SD floor
    the t statistic is infinite (Holm p 0, deployed); with it, p is the paired t at sd SD_FLOOR."""
    d = decide_table(table({"baseline": [0.700, 0.720], "a": [0.701, 0.721]}))
    assert d["deployed"] == "baseline" and not d["candidates"]["a"]["shown_better"]
    ref = stats.t.sf(0.001 / (SD_FLOOR / math.sqrt(2)), 1)      # by hand: t = 0.28, 1 df
    assert d["candidates"]["a"]["p"] == pytest.approx(ref, rel=1e-6) and ref > 0.3
    # a spread above the floor is the plain paired t (scipy), floor or not
    x, b = np.array([0.80, 0.79, 0.83]), np.array([0.70, 0.71, 0.70])
    assert one_sided_p(x - b) == pytest.approx(stats.ttest_rel(x, b, alternative="greater").pvalue)


def test_detectable_gain_is_printed_only_when_achievable():
    """2 repeats at the planning sd need a gain above 1 - baseline (impossible for ES-AUC): the
    reason says so and gives the repeats that do detect an achievable gain, each figure checked
    against min_detectable; 4 repeats with the table's own sd give an achievable figure."""
    d = decide_table(table({"baseline": [0.80, 0.82], "a": [0.83, 0.81]}))
    level = 0.05 / 1
    impossible = min_detectable(PLANNING_SD, 2, level)
    assert impossible > 1 - 0.81 and d["min_detectable_gain"] == pytest.approx(impossible)
    assert not d["detectable"] and d["planning_sd"] == PLANNING_SD
    assert "with 2 repeats no achievable gain is detectable" in d["reason"]
    assert f"{impossible:+.3f}" not in d["reason"]
    more = {r["repeats"]: r["gain"] for r in d["detectable_with_more"]}
    want = {r: min_detectable(PLANNING_SD, r, level) for r in (3, 4, 5, 6, 8, 10, 12, 16, 24)}
    assert more == pytest.approx({r: g for r, g in want.items() if r in (3, 5, 8, 12, 16) and g <= 1 - 0.81})
    assert 8 in more and all(g <= 1 - 0.81 for g in more.values())
    assert more[8] == pytest.approx(min_detectable(PLANNING_SD, 8, level)) and more[8] < 0.19
    assert f"8 repeats detect {more[8]:+.3f}" in d["reason"]
    four = decide_table(table())
    sd = math.sqrt(np.mean([np.std(np.array(VALUES[c]) - BASE, ddof=1) ** 2 for c in ("clear", "noisy", "worse")]))
    assert four["planning_sd"] == pytest.approx(sd) and four["detectable"]
    assert f"with 4 repeats this study detects a validation ES-AUC gain >= {four['min_detectable_gain']:+.3f}" in four["reason"]


def test_interval_ends_past_what_es_auc_allows_are_cut_there():
    """2 repeats, 1 df: the 95% t interval of the difference runs past [-b, 1 - b] (b: the
    baseline's mean ES-AUC); its ends are cut at those bounds, inside ones are scipy's."""
    d = decide_table(table({"baseline": [0.75, 0.79], "a": [0.65, 0.89]}))
    ci = stats.ttest_rel([0.65, 0.89], [0.75, 0.79]).confidence_interval(0.95)
    assert ci.low < -0.77 and ci.high > 0.23                       # both impossible
    row = d["candidates"]["a"]
    assert (row["diff_lo"], row["diff_hi"]) == (pytest.approx(-0.77), pytest.approx(0.23))


def test_within_seed_correlation_is_measured_from_3_repeats():
    d = decide_table(table())
    for c in ("clear", "noisy", "worse"):
        assert d["candidates"][c]["rho_within"] == pytest.approx(np.corrcoef(BASE, VALUES[c])[0, 1])
    assert d["rho_within"] == pytest.approx(np.median([np.corrcoef(BASE, VALUES[c])[0, 1]
                                                       for c in ("clear", "noisy", "worse")]))
    two = decide_table(table({"baseline": [0.70, 0.72], "a": [0.73, 0.71]}))
    assert math.isnan(two["candidates"]["a"]["rho_within"]) and two["rho_within"] is None
