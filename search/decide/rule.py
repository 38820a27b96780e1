"""The deployment rule, a pure function of a results table (docs/search.md, "How the pick is made").

Table: one row per (candidate, repeat) with columns candidate, repeat, val_auc, val_es_auc; the
same repeat id across candidates means paired (one seed, or one seed x data fold).

Rule: for every candidate c other than the baseline, the per-repeat differences
d_r = val_es_auc(c, r) - val_es_auc(baseline, r) get a one-sided paired t test of
H0: mean d <= min_gain against H1: mean d > min_gain. The p-values of ALL candidates compared are
adjusted with Holm's step-down method, which bounds the familywise error (deploying any
candidate that is not truly better by more than min_gain) at alpha under any dependence between
the candidates (they share the baseline's runs). A candidate is deployed only if its adjusted
p <= alpha and it clears the AUC floor (mean val AUC >= baseline's mean - min_auc_drop); among
several, the best mean. Otherwise the baseline.

Why paired t + Holm: the difference within a repeat cancels what the candidates share with the
baseline (the seed's data order, the split), so a baseline that varies less than the
candidates needs no assumption of equal variances; with 2 repeats the test has 1 degree of
freedom: valid, but it detects only very large gains (conservative, never anti-conservative).
The sd of the differences is taken as at least SD_FLOOR: zero spread never shows a gain by itself.
`core` is vectorised so benchmarks/decision_error.py simulates exactly this code.

What a table can detect (`detectability`) is given at a stated planning sd and never as a gain
above 1 - the baseline's ES-AUC (impossible): then the repeats that would detect one are named.
"""
from __future__ import annotations

import math

import numpy as np

COLUMNS = ("candidate", "repeat", "val_auc", "val_es_auc")
POWER = 0.8
# The smallest sd of a paired ES-AUC difference the test believes: a third of the smallest seen
# over 5 seeds in the committed comparisons (0.015: full_reference vs plain fusion,
# benchmarks/results/compare-race-cnn-4ep.json). A spread below it (a candidate exactly +0.001
# above plain fusion on every seed) is not a measured noise level, so such a table cannot show a
# small gain with a huge t statistic.
SD_FLOOR = 0.005
# Planning sd of a paired val ES-AUC difference when the table has too few repeats to estimate its
# own (fewer than 3: one degree of freedom): measured in the confirmation's own setting, one
# dataset and 12 fresh seeds of plain fusion and MultiFair (benchmarks/results/confirm-folds.json,
# "seeds"; within-seed correlation +0.17). The comparisons, whose seeds also regenerate the
# data, give 0.045 (correlation +0.80, benchmarks/results/decision-error.md): the larger is the
# safer plan.
PLANNING_SD = 0.084
LADDER = (3, 5, 8, 12, 16)   # repeats whose detectable gain is printed when this table's is not
RULE = ("paired one-sided t test of validation ES-AUC against {base} per candidate, Holm-adjusted "
        "over all {m} candidate(s): deployed if adjusted p <= {alpha} (gain > {gain}{floor}); "
        "among several, the best mean; otherwise {base}")


class BadTable(ValueError):
    """A results table the rule cannot read: one line naming the table and the fault."""


# -- the statistics, vectorised over leading axes -------------------------------------------------
def one_sided_p(diffs: np.ndarray, min_gain: float = 0.0, sd_floor: float = SD_FLOOR) -> np.ndarray:
    """p of H0: mean <= min_gain over the last axis (paired t, n-1 df), the sd of the differences
    taken as at least `sd_floor` (zero spread never shows a gain by itself). Fewer than 2
    repeats: p = 1 (nothing can be shown)."""
    from scipy.stats import t as student

    n = diffs.shape[-1]
    if n < 2:
        return np.ones(diffs.shape[:-1])
    mean, sd = diffs.mean(-1), np.maximum(diffs.std(-1, ddof=1), sd_floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = (mean - min_gain) / (sd / math.sqrt(n))
    p = student.sf(stat, n - 1)
    return np.where(np.isnan(p), 1.0, p)   # 0 / 0 (sd_floor 0, no spread, no gain): nothing shown


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values over the last axis: sorted p_(1) <= ... <= p_(m),
    adj_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)), returned in the original order."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1) * (m - np.arange(m))
    adj = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, -1)
    return out


def core(base: np.ndarray, cands: np.ndarray, alpha: float = 0.05, min_gain: float = 0.0,
         eligible: np.ndarray | None = None, family: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """base (..., n), cands (..., m, n) validation ES-AUC, paired on the last axis. `family`:
    the number of hypotheses Holm adjusts over when larger than m (candidates no longer tested,
    e.g. dropped by an earlier look of the confirmation, count with p = 1).
    Returns (Holm-adjusted p (..., m), deployed index (...), -1 for the baseline)."""
    diffs = cands - base[..., None, :]
    p = one_sided_p(diffs, min_gain)
    m = p.shape[-1]
    if family is not None and family > m:
        p = np.concatenate([p, np.ones(p.shape[:-1] + (family - m,))], axis=-1)
    p_adj = holm(p)[..., :m]
    mean = diffs.mean(-1)
    ok = (p_adj <= alpha) & (mean > min_gain)
    if eligible is not None:
        ok &= eligible
    score = np.where(ok, mean, -np.inf)
    best = score.argmax(-1)
    return p_adj, np.where(ok.any(-1), best, -1)


def old_rule(base: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """The rule this one replaced: the best candidate mean, deployed if above the baseline's."""
    means = cands.mean(-1)
    best = means.argmax(-1)
    return np.where(np.take_along_axis(means, best[..., None], -1)[..., 0] > base.mean(-1), best, -1)


def min_detectable(sd: float, n: int, level: float, min_gain: float = 0.0, power: float = POWER) -> float:
    """The smallest true mean difference a one-sided paired t test at `level` with n repeats
    detects with probability `power`, if the differences' sd is `sd` (noncentral t, exact)."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t as student

    sd = max(sd, SD_FLOOR)
    if n < 2 or not math.isfinite(sd):
        return math.inf
    crit = student.ppf(1 - level, n - 1)
    reach = lambda delta: nct.sf(crit, n - 1, delta * math.sqrt(n) / sd) - power   # noqa: E731
    hi = sd
    while reach(hi) < 0:
        hi *= 2
    return min_gain + brentq(reach, 0.0, hi, xtol=1e-10)


# -- the table ------------------------------------------------------------------------------------
def check_table(df, baseline: str, name: str = "table"):
    """The paired layout: one value per (candidate, repeat), every candidate on the baseline's
    repeats. Returns (repeats, candidates other than the baseline)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise BadTable(f"{name}: missing column(s) {', '.join(missing)} (need {', '.join(COLUMNS)})")
    labels = list(dict.fromkeys(df["candidate"].astype(str)))
    if baseline not in labels:
        raise BadTable(f"{name}: no rows for the baseline {baseline!r} (candidates: {', '.join(labels)}); "
                       "name it with --baseline")
    dup = df.duplicated(["candidate", "repeat"])
    if dup.any():
        row = df[dup].iloc[0]
        raise BadTable(f"{name}: candidate {row['candidate']!r} has repeat {row['repeat']} twice")
    bad = df[["val_auc", "val_es_auc"]].apply(lambda c: ~np.isfinite(c.astype(float))).any(axis=1)
    if bad.any():
        row = df[bad].iloc[0]
        raise BadTable(f"{name}: candidate {row['candidate']!r} repeat {row['repeat']} has no finite "
                       "val_auc / val_es_auc")
    repeats = {c: set(df.loc[df["candidate"].astype(str) == c, "repeat"]) for c in labels}
    ref = repeats[baseline]
    for c in labels:
        if repeats[c] != ref:
            extra, lack = sorted(map(str, repeats[c] - ref)), sorted(map(str, ref - repeats[c]))
            raise BadTable(f"{name}: repeats are not paired: candidate {c!r} "
                           + (f"lacks repeat(s) {', '.join(lack)} of the baseline" if lack else
                              f"has repeat(s) {', '.join(extra)} the baseline lacks"))
    return sorted(ref, key=str), [c for c in labels if c != baseline]


def _matrix(df, labels, repeats, column):
    wide = df.assign(candidate=df["candidate"].astype(str)).pivot(index="candidate", columns="repeat",
                                                                 values=column)
    return wide.loc[labels, repeats].to_numpy(float)


def decide_table(df, alpha: float = 0.05, min_gain: float = 0.0, baseline: str = "baseline",
                 min_auc_drop: float | None = None, name: str = "table",
                 baseline_name: str | None = None, family: int | None = None) -> dict:
    """The decision with its evidence (a JSON-able dict): deployed label, the rule, per candidate
    the paired difference to the baseline (mean, 95% t interval, unadjusted), raw and Holm p,
    eligibility and the minimum detectable gain; one line `reason`."""
    from scipy.stats import t as student

    if not 0 < alpha < 1:
        raise BadTable(f"--alpha {alpha}: give a level in (0, 1), e.g. 0.05")
    repeats, cands = check_table(df, baseline, name)
    base_name = baseline_name or baseline
    n, m = len(repeats), len(cands)
    es = _matrix(df, [baseline] + cands, repeats, "val_es_auc")
    auc = _matrix(df, [baseline] + cands, repeats, "val_auc")
    floor = auc[0].mean() - min_auc_drop if min_auc_drop is not None else -math.inf
    eligible = auc[1:].mean(-1) >= floor
    diffs = es[1:] - es[0]
    p_raw = one_sided_p(diffs, min_gain) if m else np.zeros(0)
    family = max(m, family or 0)
    p_adj, pick = core(es[0], es[1:], alpha, min_gain, eligible, family) if m else (np.zeros(0), -1)
    sd = diffs.std(-1, ddof=1) if n >= 2 else np.full(m, math.nan)
    pooled = float(np.sqrt(np.mean(sd ** 2))) if m and n >= 2 else math.nan
    level = alpha / max(family, 1)   # Holm's first step: what a lone better candidate must pass
    half = (student.ppf(0.975, n - 1) * np.maximum(sd, SD_FLOOR) / math.sqrt(n) if n >= 2
            else np.full(m, math.nan))
    # ES-AUC lies in [0, 1]: a difference to the baseline's mean b lies in [-b, 1 - b], and an
    # interval end past it (1 df: often) is cut there rather than printed as an impossible figure
    low, high = -float(es[0].mean()), 1.0 - float(es[0].mean())
    rows = {}
    for i, c in enumerate(cands):
        mean = float(diffs[i].mean())
        rows[c] = {"n": n, "val_es_auc": float(es[i + 1].mean()), "val_auc": float(auc[i + 1].mean()),
                   "diff": mean, "diff_lo": float(max(mean - half[i], low)),
                   "diff_hi": float(min(mean + half[i], high)),
                   "sd_diff": float(sd[i]), "p": float(p_raw[i]), "p_holm": float(p_adj[i]),
                   "eligible": bool(eligible[i]), "shown_better": bool(p_adj[i] <= alpha and mean > min_gain),
                   "min_detectable_gain": min_detectable(float(sd[i]) if n >= 3 else PLANNING_SD, n,
                                                         level, min_gain),
                   "rho_within": _corr(es[0], es[i + 1])}
    deployed = cands[int(pick)] if m and int(pick) >= 0 else baseline
    out = {"table": name, "deployed": deployed, "baseline": baseline, "baseline_name": base_name,
           "n_repeats": n,
           "n_candidates": m, "alpha": alpha, "min_gain": min_gain, "min_auc_drop": min_auc_drop,
           "auc_floor": None if math.isinf(floor) else float(floor),
           "baseline_val_es_auc": float(es[0].mean()), "baseline_val_auc": float(auc[0].mean()),
           "family": family, "sd_floor": SD_FLOOR,
           "rule": RULE.format(base=base_name, m=family, alpha=alpha, gain=min_gain,
                               floor=f", mean val AUC >= {base_name}'s - {min_auc_drop}"
                               if min_auc_drop is not None else ""),
           **detectability(pooled, n, level, min_gain, 1.0 - float(es[0].mean())),
           "rho_within": _median([r["rho_within"] for r in rows.values()]),
           "candidates": rows, "warnings": []}
    if n < 2:
        out["warnings"].append(f"{n} repeat: no interval, so nothing can be shown better than "
                               f"{base_name}; give 2 or more")
    out["detection"] = detection_phrase(out)
    best = _best(rows)
    out["best_candidate"] = best
    out["reason"] = reason(out, base_name)
    return out


def detectability(pooled: float, n: int, level: float, min_gain: float, headroom: float) -> dict:
    """The gain this table detects with POWER, at a stated planning sd of the paired differences:
    the table's pooled sd when it has 3+ repeats (2+ degrees of freedom), else PLANNING_SD. A gain
    above `headroom` (1 - the baseline's mean val ES-AUC: ES-AUC is at most 1) cannot happen, so
    such a figure is flagged not achievable, and the gains LADDER's larger repeats detect are
    given instead."""
    own = n >= 3 and math.isfinite(pooled)
    sd = max(pooled, SD_FLOOR) if own else PLANNING_SD
    source = (f"the table's pooled sd of the differences, {n} repeats" if own else
              f"planning sd measured in a confirmation of generated data, benchmarks/results/"
              f"confirm-folds.json; {n} repeat(s) are too few to estimate it")
    gain = min_detectable(sd, n, level, min_gain)
    ladder = [{"repeats": r, "gain": g} for r in LADDER if r > n
              for g in [min_detectable(sd, r, level, min_gain)] if g <= headroom]
    return {"min_detectable_gain": gain, "detectable": bool(gain <= headroom), "headroom": headroom,
            "planning_sd": sd, "planning_sd_source": source, "detectable_with_more": ladder,
            "min_detectable_note": f"true val ES-AUC gain detected with {POWER:.0%} power by a one-sided "
                                   f"paired t test at level {level:.3g} (Holm's first step) with {n} "
                                   f"repeats, at the planning sd {sd:.4f} ({source})"}


def detection_phrase(d: dict) -> str:
    """One clause on what the table can detect; never an impossible gain (above 1 - baseline)."""
    n, sd = d["n_repeats"], d["planning_sd"]
    if d["detectable"]:
        return (f"with {n} repeats this study detects a validation ES-AUC gain >= "
                f"{d['min_detectable_gain']:+.3f} at {POWER:.0%} power (planning sd {sd:.3f})")
    more = ", ".join(f"{r['repeats']} repeats detect {r['gain']:+.3f}" for r in d["detectable_with_more"])
    return (f"with {n} repeat{'s' if n != 1 else ''} no achievable gain is detectable (ES-AUC can rise "
            f"at most {d['headroom']:+.3f})" + (f"; {more} at {POWER:.0%} power" if more else "")
            + f" (planning sd {sd:.3f})")


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Within-repeat correlation of two candidates' scores; NaN below 3 repeats (two points always
    correlate +-1) or without spread."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _median(values) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def _best(rows: dict) -> str | None:
    """The candidate the reason line names: the best mean among eligible ones (else all)."""
    pool = {c: r for c, r in rows.items() if r["eligible"]} or rows
    return max(pool, key=lambda c: pool[c]["diff"]) if pool else None


def _evidence(c: str, r: dict) -> str:
    return f"{c}, {r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}], Holm p={r['p_holm']:.2g}"


def reason(d: dict, base_name: str) -> str:
    """One line: why this label is deployed."""
    rows, dep = d["candidates"], d["deployed"]
    if dep != d["baseline"]:
        return (f"{dep}: shown better than {base_name} ({_evidence(dep, rows[dep])} <= {d['alpha']}; "
                f"{detection_phrase(d)})")
    best = d.get("best_candidate")
    if best is None:
        return f"{base_name}: no candidate to compare"
    if any(r["shown_better"] for r in rows.values()):
        why = "the candidates shown better fall below the AUC floor"
    elif any(r["eligible"] for r in rows.values()):
        why = "no candidate shown better"
    else:
        why = "no candidate clears the AUC floor"
    return f"{base_name}: {why} (best: {_evidence(best, rows[best])}; {detection_phrase(d)})"
