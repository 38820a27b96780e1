"""Fairness metrics: evaluation on numpy, bootstrap for test reporting, exact AUC on the device.

Definitions follow multifair-method.md ("Metrics"):

- ``auc``: sklearn ``roc_auc_score`` on the probability of class 1.
- ``es_auc`` = auc / (1 + SUM_g |auc_g - auc|)  (sum form, alpha = 1).
- ``worst_group_auc`` = min_g auc_g.
- ``dpd``: max_g - min_g selection rate, prediction = ``y_prob >= threshold``.
- ``deodds``: max(TPR gap, FPR gap) ("worst case"), as fairlearn's ``equalized_odds_difference``.

Conventions, chosen once and used by every function here:

- Samples whose group is -1 (unknown) are excluded from every metric, overall ones included.
- An UNDEFINED group (one class present, so no AUC) has group AUC NaN, is reported with its
  count (``group_count``, ``group_positive``) and listed in ``undefined_groups``, and is left out
  of BOTH the es_auc sum and the worst_group_auc minimum: the two summaries are over the same
  defined groups. If no group AUC is defined at all, both are NaN (dividing by 1 + an empty sum
  would pass the overall AUC off as fair). One treatment everywhere: evaluate_fairness, the
  bootstrap resamples (each resample decides which groups are defined; ``n_valid`` counts the
  resamples where a metric was defined) and the paired test of the search (search/paired.py).
- A group without positives (negatives) has no TPR (FPR); it is left out of that gap. fairlearn
  counts such a rate as 0 (sklearn's confusion matrix turns 0/0 into 0), so on such degenerate
  groups our deodds is smaller than fairlearn's; on all other inputs the two are identical.
- With ``group_names`` every named group is reported (count 0 and NaN when absent), so logged keys
  are the same every epoch; without it, groups are the codes present, keyed ``str(code)``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

UNKNOWN_GROUP = -1


# ----------------------------------------------------------------------------- input checks

def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_inputs(y_true, y_prob, groups, threshold, group_names):
    """Validate and return (y int8, p float64, g int64) with group -1 removed."""
    y, p, g = _to_numpy(y_true, "y_true"), _to_numpy(y_prob, "y_prob"), _to_numpy(groups, "groups")
    if not (len(y) == len(p) == len(g)):
        raise ValueError(f"length mismatch: y_true has {len(y)}, y_prob {len(p)}, groups {len(g)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    p = p.astype(np.float64)
    bad = ~((p >= 0.0) & (p <= 1.0))  # NaN fails both comparisons
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y_prob must be probabilities in [0, 1]; "
                         f"y_prob[{i}] = {p[i].item()!r}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"y_true must hold labels 0/1; y_true[{i}] = {y[i].item()!r}")
    g_float = g.astype(np.float64) if g.dtype.kind in "biuf" else None
    if g_float is None or not np.all(np.isfinite(g_float) & (g_float == np.round(g_float))):
        raise ValueError(f"groups must be integer codes (-1 = unknown), got dtype {g.dtype}")
    g = g.astype(np.int64)
    bad = g < UNKNOWN_GROUP
    if group_names is not None:
        bad |= (g != UNKNOWN_GROUP) & ~np.isin(g, list(group_names))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        known = f"; known codes: {sorted(group_names)}" if group_names else ""
        raise ValueError(f"groups[{i}] = {g[i]} is not a valid group code{known}")
    keep = g != UNKNOWN_GROUP
    y, p, g = y[keep].astype(np.int8), p[keep], g[keep]
    present = np.unique(g)
    if len(present) < 2:
        raise ValueError(f"groups: need at least 2 groups with samples (group -1 excluded), "
                         f"got codes {present.tolist()}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"y_true: AUC needs both classes; only label {int(y[0])} is present "
                         f"among the {len(y)} samples with a known group")
    return y, p, g


def _group_table(g: np.ndarray, group_names: Mapping[int, str] | None) -> list[tuple[int, str]]:
    """(code, name) pairs in code order: every named group, or the codes present."""
    if group_names is not None:
        return [(int(c), str(group_names[c])) for c in sorted(group_names)]
    return [(int(c), str(int(c))) for c in np.unique(g)]


def _rate_gap(rates: np.ndarray) -> np.ndarray:
    """max - min over the last axis, ignoring NaN (undefined groups); NaN if none is defined."""
    defined = ~np.isnan(rates)
    hi = np.where(defined, rates, -np.inf).max(axis=-1)
    lo = np.where(defined, rates, np.inf).min(axis=-1)
    return np.where(defined.any(axis=-1), hi - lo, np.nan)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _es_auc(auc, group_auc: np.ndarray):
    """auc / (1 + sum of defined |auc_g - auc|) along the last axis; NaN if no group is defined."""
    dev = np.abs(group_auc - np.expand_dims(auc, -1))
    defined = ~np.isnan(dev)
    total = np.where(defined, dev, 0.0).sum(axis=-1)
    return np.where(defined.any(axis=-1), auc / (1.0 + total), np.nan)


def worst_group_auc(group_auc) -> np.ndarray | float:
    """The lowest DEFINED group AUC along the last axis (undefined groups, NaN, left out, as in
    es_auc); NaN if no group is defined. A dict {name: auc} gives a float."""
    if isinstance(group_auc, Mapping):
        return float(worst_group_auc(np.array(list(group_auc.values()), dtype=np.float64)))
    group_auc = np.asarray(group_auc, dtype=np.float64)
    defined = ~np.isnan(group_auc)
    lowest = np.where(defined, group_auc, np.inf).min(axis=-1)
    return np.where(defined.any(axis=-1), lowest, np.nan)


# ----------------------------------------------------------------------------- evaluation

def evaluate_fairness(y_true, y_prob, groups, threshold: float = 0.5,
                      group_names: Mapping[int, str] | None = None) -> dict:
    """All metrics for one set of predictions, as a JSON-serialisable dict of python numbers.

    Keys: n, auc, es_auc, worst_group_auc, dpd, deodds, group_auc {name: float|NaN}, group_count
    {name: int}, group_positive {name: int}, undefined_groups [names with NaN AUC, left out of
    es_auc and worst_group_auc]. Inputs: lists, numpy arrays or torch tensors; group codes are
    ints, -1 = unknown (excluded).
    """
    y, p, g = _check_inputs(y_true, y_prob, groups, threshold, group_names)
    pred = p >= threshold
    auc = float(roc_auc_score(y, p))
    table = _group_table(g, group_names)
    group_auc, group_count, group_positive = {}, {}, {}
    sel, tpr, fpr = [], [], []
    for code, name in table:
        m = g == code
        n_g, pos_g = int(m.sum()), int(y[m].sum())
        group_count[name], group_positive[name] = n_g, pos_g
        both = 0 < pos_g < n_g
        group_auc[name] = float(roc_auc_score(y[m], p[m])) if both else math.nan
        sel.append(pred[m].mean() if n_g else np.nan)
        tpr.append(pred[m & (y == 1)].mean() if pos_g else np.nan)
        fpr.append(pred[m & (y == 0)].mean() if n_g - pos_g else np.nan)
    gauc = np.array(list(group_auc.values()))
    return {
        "n": int(len(y)),
        "auc": auc,
        "es_auc": float(_es_auc(auc, gauc)),
        "worst_group_auc": float(worst_group_auc(gauc)),
        "dpd": float(_rate_gap(np.array(sel))),
        "deodds": float(np.fmax(_rate_gap(np.array(tpr)), _rate_gap(np.array(fpr)))),
        "group_auc": group_auc,
        "group_count": group_count,
        "group_positive": group_positive,
        "undefined_groups": [name for name, a in group_auc.items() if math.isnan(a)],
    }


def auc_summary(y_true, y_prob, groups, group_names: Mapping[int, str] | None = None) -> dict:
    """{"auc", "es_auc", "group_auc"} of a subset that may be empty, hold one class or one group
    (the missing-modality and shifted-site blocks): NaN where undefined, never an error. The
    definitions are evaluate_fairness's (unknown group -1 excluded; undefined groups left out of
    es_auc; es_auc NaN when no group AUC is defined)."""
    y, p, g = (_to_numpy(a, n) for a, n in ((y_true, "y_true"), (y_prob, "y_prob"),
                                            (groups, "groups")))
    keep = g != UNKNOWN_GROUP
    y, p, g = y[keep], p[keep].astype(np.float64), g[keep].astype(np.int64)

    def auc_of(mask) -> float:
        return float(roc_auc_score(y[mask], p[mask])) if len(np.unique(y[mask])) == 2 else math.nan

    auc = auc_of(np.ones(len(y), bool))
    group_auc = {name: auc_of(g == code) for code, name in _group_table(g, group_names)}
    es = _es_auc(auc, np.array(list(group_auc.values()), dtype=np.float64)) if group_auc else math.nan
    return {"auc": auc, "es_auc": float(es), "group_auc": group_auc}


# ----------------------------------------------------------------------------- bootstrap

def _weighted_auc(weights: np.ndarray, y_sorted: np.ndarray, starts: np.ndarray,
                  member: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row of `weights` (B, n), samples already sorted by score.

    `starts` opens each run of tied scores; `member` (n,) selects the samples that count. A pair
    of tied scores counts 1/2. NaN where a row has no positive or no negative weight.
    """
    pos = np.add.reduceat(weights * (member & (y_sorted == 1)), starts, axis=1)
    neg = np.add.reduceat(weights * (member & (y_sorted == 0)), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    return _safe_div(num, pos.sum(axis=1) * neg.sum(axis=1))


def _resample_metrics(y, p, g, weights, threshold, table) -> dict[str, np.ndarray]:
    """Every scalar metric for each row of integer sample weights (B, n): one bootstrap resample
    per row, equal to evaluate_fairness on the resample, with NaN where a metric is undefined."""
    order = np.argsort(p, kind="stable")
    ps, ys, gs, ws = p[order], y[order], g[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pred, everyone = ps >= threshold, np.ones(len(ps), bool)
    auc = _weighted_auc(ws, ys, starts, everyone)
    member = np.stack([gs == code for code, _ in table])                    # (G, n)
    group_auc = np.stack([_weighted_auc(ws, ys, starts, m) for m in member], axis=1)  # (B, G)

    def rate(cond: np.ndarray) -> np.ndarray:  # per resample and group: P(pred | cond, group)
        w_cond = ws[:, None, :] * (member & cond)                          # (B, G, n)
        return _safe_div((w_cond * pred).sum(-1), w_cond.sum(-1))

    enough_groups = ((ws[:, None, :] * member).sum(-1) > 0).sum(-1) >= 2   # evaluate would refuse
    sel, tpr, fpr = rate(everyone), rate(ys == 1), rate(ys == 0)
    out = {
        "auc": auc,
        "es_auc": np.where(enough_groups, _es_auc(auc, group_auc), np.nan),
        "worst_group_auc": np.where(enough_groups, worst_group_auc(group_auc), np.nan),
        "dpd": np.where(enough_groups, _rate_gap(sel), np.nan),
        "deodds": np.where(enough_groups & ~np.isnan(auc),
                           np.fmax(_rate_gap(tpr), _rate_gap(fpr)), np.nan),
    }
    for j, (_, name) in enumerate(table):
        out[f"auc/{name}"] = group_auc[:, j]
    return out


def bootstrap_fairness(y_true, y_prob, groups, n: int = 100, seed: int = 0, threshold: float = 0.5,
                       group_names: Mapping[int, str] | None = None) -> dict:
    """Mean and std (numpy's nanstd, ddof=0) of the scalar metrics over `n` resamples of the
    predictions drawn with replacement (numpy Generator(seed)); group -1 is excluded first.

    Returns {"mean": {metric: float}, "std": {metric: float}, "n_resamples": n,
    "n_valid": {metric: resamples where it was defined}} over auc, es_auc, worst_group_auc, dpd,
    deodds and "auc/<group name>". A metric undefined in every resample has mean and std NaN.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of resamples) must be a positive integer, got {n!r}")
    y, p, g = _check_inputs(y_true, y_prob, groups, threshold, group_names)
    size = len(y)
    draws = np.random.default_rng(seed).integers(0, size, size=(n, size))
    # Resampling with replacement == integer weights: how often each sample was drawn.
    offsets = (np.arange(n) * size)[:, None]
    weights = np.bincount((draws + offsets).ravel(), minlength=n * size).reshape(n, size)
    per_resample = _resample_metrics(y, p, g, weights.astype(np.float64), threshold,
                                     _group_table(g, group_names))
    mean, std, n_valid = {}, {}, {}
    for key, values in per_resample.items():
        ok = values[~np.isnan(values)]
        n_valid[key] = int(ok.size)
        mean[key] = float(ok.mean()) if ok.size else math.nan
        std[key] = float(ok.std()) if ok.size else math.nan
    return {"mean": mean, "std": std, "n_resamples": int(n), "n_valid": n_valid}


# ----------------------------------------------------------------------------- on-device AUC

def _pairwise_auc(scores: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                  index: torch.Tensor, size: int) -> torch.Tensor:
    """Exact AUC per bucket `index` (long, (n,)) from all positive/negative pairs sharing a bucket.

    Counts are int64 (exact for any batch); a tie counts 1/2. NaN for a bucket without both classes.
    """
    pairs = pos[:, None] & neg[None, :] & (index[:, None] == index[None, :])  # i pos, j neg
    twice_wins = (2 * ((scores[:, None] > scores[None, :]) & pairs).sum(1)
                  + ((scores[:, None] == scores[None, :]) & pairs).sum(1))
    # Sum per bucket through a one-hot mask rather than index_add: no atomics, deterministic.
    onehot = index[:, None] == torch.arange(size, device=index.device)         # (n, size)
    num = (twice_wins[:, None] * onehot).sum(0)
    n_pos = (pos[:, None] & onehot).sum(0)
    n_neg = (neg[:, None] & onehot).sum(0)
    den = 2 * n_pos * n_neg
    auc = num.double() / den.clamp_min(1).double()
    return torch.where(den > 0, auc, torch.full_like(auc, math.nan)).float()


def batch_auc(scores: torch.Tensor, labels: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact AUC of `scores` for binary `labels` (> 0.5 is positive) as a 0-dim float32 tensor on
    the scores' device, NaN when one class is absent. Pure tensor ops (no host sync); O(n^2)
    memory, meant for training batches. `mask` (bool, (n,)) keeps a subset of the samples."""
    scores, labels = scores.detach().reshape(-1), labels.detach().reshape(-1)
    pos = labels > 0.5
    keep = torch.ones_like(pos) if mask is None else mask.reshape(-1).bool()
    index = torch.zeros_like(scores, dtype=torch.long)
    return _pairwise_auc(scores, pos & keep, ~pos & keep, index, 1)[0]


def group_auc_tensor(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                     num_groups: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact AUC per group code 0..num_groups-1 as a float32 tensor (num_groups,), NaN for a group
    without both classes. Samples with a code outside that range (e.g. -1) are ignored."""
    scores, labels, groups = (t.detach().reshape(-1) for t in (scores, labels, groups))
    keep = (groups >= 0) & (groups < num_groups)
    if mask is not None:
        keep = keep & mask.reshape(-1).bool()
    pos = labels > 0.5
    index = groups.long().clamp(0, num_groups - 1)
    return _pairwise_auc(scores, pos & keep, ~pos & keep, index, num_groups)


# ----------------------------------------------------------------------------- thresholds

def prevalence_threshold(y_true, y_prob) -> float:
    """The validation threshold rule: the score above which the share of predicted positives
    equals the share of positives (the k-th largest score, k = round(prevalence * n)).

    Chosen over Youden's J because it depends only on the ranking and the prevalence, so it is
    stable on small validation splits (J is the argmax of a jagged curve) and meaningful for
    uncalibrated scores (a fixed 0.5 can put every sample on one side)."""
    y, p = _to_numpy(y_true, "y_true"), _to_numpy(y_prob, "y_prob").astype(np.float64)
    k = max(1, int(round(float(np.mean(y)) * len(p))))
    return float(np.sort(p)[::-1][k - 1])


def at_val_threshold(y_true, y_prob, groups, threshold_val: float | None = None,
                     group_names: Mapping[int, str] | None = None) -> dict:
    """threshold_val (chosen on these predictions when None: call it on VALIDATION), and DPD and
    DEOdds at that threshold; keys threshold_val, dpd_at_val_threshold, deodds_at_val_threshold."""
    if threshold_val is None:
        threshold_val = prevalence_threshold(y_true, y_prob)
    m = evaluate_fairness(y_true, y_prob, groups, threshold=threshold_val, group_names=group_names)
    return {"threshold_val": float(threshold_val), "dpd_at_val_threshold": m["dpd"],
            "deodds_at_val_threshold": m["deodds"]}
