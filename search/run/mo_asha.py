"""Multi-objective early stopping for `--objective pareto` and `constrained`: MO-ASHA.

ASHA (Li et al. 2020) stops a trial at a rung unless it is in the top 1/eta of the results
recorded at that rung so far. With two objectives there is no single "top": MO-ASHA (Schmucker
et al. 2021, "Multi-objective Asynchronous Successive Halving") orders the rung's results by
non-dominated sorting (NSGA-II: front by front, and within a front by crowding distance) and
promotes the top of that order. Everything else is ASHA's: asynchronous (a trial is judged once,
when it first reaches the rung, against what is recorded there so far; nobody waits for a full
rung), one bracket, the same rung milestones (grace_period * eta^k up to max_t), and the trial
stops at max_t.

The count is Ray's, exactly: Ray's ASHAScheduler continues a trial whose value is at least the
(1 - 1/eta) percentile (numpy's linear interpolation) of the values recorded at the rung BEFORE
it. Here the new trial's place in the order of all of them plays the value: it continues when it
is above the recorded point at the percentile's index, stops below the point under it, and when
it falls between the two, continues unless their linear interpolation dominates it. On a rung
where the objectives agree (one order) this is Ray's decision trial for trial
(tests/search/run/test_mo_asha.py compares n = 1..20 with Ray's own scheduler).

Ties in the order are never broken by arrival: the trial being judged goes before the points it
ties with (same front, same crowding distance), as an equal value goes on under Ray's cutoff, so
a new end of a front (infinite crowding distance) is never stopped by another end; other ties by
the objectives, the best on the first objective (validation AUC) first, as Syne Tune's
NonDominatedPriority seeds its epsilon-net at its first objective
(syne_tune/optimizer/schedulers/multiobjective/non_dominated_priority.py). An undefined result (NaN) is recorded as the
worst value in every objective: it is judged at the rung like any other and stopped there unless
nothing better is recorded (Ray's ASHA instead records NaN and never stops on it).

Why this rule and not ASHA on ES-AUC alone: ES-AUC = AUC / (1 + sum of group gaps); a trial with
a high AUC and a middling gap sits on the (AUC, ES-AUC) front but is below the ES-AUC cutoff at
an early rung, so single-objective ASHA stops trials the front needs. Non-dominated sorting
keeps both ends of the front and its middle (crowding distance) at every rung.

Cost at the real size: the rule is O(n^2) comparisons over the results at one rung (n <= the
number of trials, 100): microseconds on the driver, nothing on the GPUs.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler


def nondominated_fronts(points: np.ndarray) -> list[list[int]]:
    """Indices of `points` (n x m, every objective maximised) split into successive fronts."""
    n = len(points)
    ge = (points[:, None, :] >= points[None, :, :]).all(-1)
    gt = (points[:, None, :] > points[None, :, :]).any(-1)
    dominates = ge & gt                     # dominates[i, j]: i dominates j
    count = dominates.sum(0)                # how many points dominate j
    fronts, left = [], np.ones(n, bool)
    while left.any():
        front = [int(j) for j in np.flatnonzero(left & (count == 0))]
        fronts.append(front)
        left[front] = False
        count = count - dominates[front].sum(0)
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within one front (boundary points: infinity)."""
    n, m = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for k in range(m):
        order = np.argsort(points[:, k], kind="stable")
        span = points[order[-1], k] - points[order[0], k]
        dist[order[0]] = dist[order[-1]] = math.inf
        if span > 0:
            dist[order[1:-1]] += (points[order[2:], k] - points[order[:-2], k]) / span
    return dist


def nsga_order(points: np.ndarray, first: int | None = None) -> list[int]:
    """All indices, best first: front by front, each front by decreasing crowding distance;
    `first` (the trial being judged) before the points it ties with (same front, same crowding
    distance: a tie goes on, as an equal value does under Ray's cutoff); other ties by the
    objectives (the first objective first, then the next), never by arrival."""
    order = []
    for front in nondominated_fronts(points):
        crowd = crowding_distance(points[front])
        key = lambda i: (-crowd[i], front[i] != first, *(-points[front[i]]), front[i])   # noqa: E731
        order += [front[i] for i in sorted(range(len(front)), key=key)]
    return order


def worst_if_undefined(values) -> tuple[float, ...]:
    """An objective vector with any NaN recorded as the worst value in every objective."""
    values = tuple(float(v) for v in values)
    return tuple(-math.inf for _ in values) if any(math.isnan(v) for v in values) else values


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """numpy's percentile interpolation between a and b (the same rounding as Ray's cutoff);
    undefined parts (toward a NaN result, recorded as -inf) are the worst value."""
    with np.errstate(invalid="ignore"):
        out = a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)
    return np.where(np.isnan(out), -np.inf, out)


def promotes(recorded: dict[str, tuple], trial_id: str, eta: float, keep_front: bool = False) -> bool:
    """MO-ASHA's decision for `trial_id`, whose result is already in `recorded` (trial id ->
    objective vector, maximised, in arrival order), against the results recorded before it, with
    Ray's ASHA count (module docstring). keep_front: also every point of the rung's first front
    (the safer variant, measured in benchmarks/search_quality.py)."""
    ids = list(recorded)
    me, k = ids.index(trial_id), len(ids) - 1
    if k == 0:
        return True                             # Ray: nothing recorded, no cutoff
    points = np.array([recorded[i] for i in ids], dtype=float)
    if keep_front and me in nondominated_fronts(points)[0]:
        return True
    order = nsga_order(points, first=me)
    below = order[order.index(me) + 1:]         # recorded points ranked under the new one
    ascending = [i for i in reversed(order) if i != me]
    h = float(np.percentile(np.arange(k), (1 - 1 / eta) * 100))   # Ray's percentile, as an index
    low, frac = int(math.floor(h)), h - math.floor(h)
    if len(below) > low + (frac > 0):
        return True                             # at or above the recorded point at the cutoff
    if len(below) <= low:
        return False                            # under the point below the cutoff
    cut = _lerp(points[ascending[low]], points[ascending[low + 1]], frac)
    mine = points[me]
    return not (np.all(cut >= mine) and np.any(cut > mine))   # between: stopped if dominated


class MOASHAScheduler(FIFOScheduler):
    """Asynchronous successive halving over several objectives (module docstring).

    metrics/modes: the objectives (default validation AUC and ES-AUC, both maximised). Tune's
    TuneConfig metric (the constrained objective gives one) is accepted and not used: the
    scheduler keeps its own objectives. `decisions` records every rung decision (trial id, rung,
    promoted, the results recorded at that rung then) for tests and reports."""

    def __init__(self, metrics=("auc", "es_auc"), modes=("max", "max"), time_attr: str = "epoch",
                 max_t: int = 10, grace_period: int = 1, reduction_factor: float = 3,
                 keep_front: bool = False):
        if not (0 < grace_period <= max_t) or reduction_factor <= 1 or len(metrics) != len(modes):
            raise ValueError(f"MO-ASHA: need 0 < grace_period ({grace_period}) <= max_t ({max_t}), "
                             f"reduction_factor > 1 ({reduction_factor}) and one mode per metric")
        super().__init__()
        self.metrics, self.signs = list(metrics), [1.0 if m == "max" else -1.0 for m in modes]
        self.time_attr, self.max_t, self.eta = time_attr, max_t, reduction_factor
        n_rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self.rungs = {grace_period * reduction_factor ** k: {} for k in range(n_rungs)}
        self.keep_front = keep_front
        self.decisions: list[dict] = []
        self.num_stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.time_attr not in result or any(m not in result for m in self.metrics):
            return TrialScheduler.CONTINUE
        t = result[self.time_attr]
        if t >= self.max_t:
            return TrialScheduler.STOP
        action = self._judge(trial.trial_id, t, result)
        self.num_stopped += action == TrialScheduler.STOP
        return action

    def _judge(self, trial_id: str, t: float, result: dict) -> str:
        # the highest rung this result reaches that has not judged this trial yet (as ASHA)
        for milestone in sorted(self.rungs, reverse=True):
            recorded = self.rungs[milestone]
            if t < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = worst_if_undefined(s * float(result[m]) for s, m in zip(self.signs, self.metrics))
            keep = promotes(recorded, trial_id, self.eta, getattr(self, "keep_front", False))
            self.decisions.append({"trial_id": trial_id, "rung": milestone, "promoted": keep,
                                   "recorded": dict(recorded)})
            return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return (f"Using MO-ASHA over {self.metrics}: num_stopped={self.num_stopped}, rungs "
                + ", ".join(f"{m}: {len(r)} recorded" for m, r in sorted(self.rungs.items())))

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
