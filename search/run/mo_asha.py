"""Multi-objective early stopping for `--objective pareto` and `constrained`: MO-ASHA.

ASHA (Li et al. 2020) stops a trial at a rung unless it is in the top 1/eta of the results
recorded at that rung so far. With two objectives there is no single "top": MO-ASHA (Schmucker
et al. 2021, "Multi-objective Asynchronous Successive Halving") orders the rung's results by
non-dominated sorting (NSGA-II: front by front, and within the last front by crowding distance,
boundary points first) and promotes the first ceil(n / eta) of that order. Everything else is
ASHA's: asynchronous (a trial is judged once, when it first reaches the rung, against what is
recorded there so far; nobody waits for a full rung), one bracket, the same rung milestones
(grace_period * eta^k up to max_t), the same count (ceil(n / eta), which is what Ray's ASHA
percentile cutoff keeps), and the trial stops at max_t.

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


def nsga_order(points: np.ndarray) -> list[int]:
    """All indices, best first: front by front, each front by decreasing crowding distance
    (ties by index, i.e. arrival order)."""
    order = []
    for front in nondominated_fronts(points):
        crowd = crowding_distance(points[front])
        order += [front[i] for i in sorted(range(len(front)), key=lambda i: (-crowd[i], front[i]))]
    return order


def promotes(recorded: dict[str, tuple], trial_id: str, eta: float, keep_front: bool = False) -> bool:
    """MO-ASHA's decision for `trial_id`, whose result is already in `recorded` (trial id ->
    objective vector, maximised, in arrival order): in the first ceil(n / eta) of nsga_order, or
    equal to a point that is (ties go on together, as they do under ASHA's cutoff). keep_front:
    also every point of the rung's first front (the safer variant, measured in
    benchmarks/search_quality.py)."""
    ids = list(recorded)
    points = np.array([recorded[i] for i in ids], dtype=float)
    order = nsga_order(points)
    keep = set(order[:max(1, math.ceil(len(ids) / eta))])
    if keep_front:
        keep |= set(nondominated_fronts(points)[0])
    me = ids.index(trial_id)
    return me in keep or any((points[k] == points[me]).all() for k in keep)


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
            values = tuple(s * float(result[m]) for s, m in zip(self.signs, self.metrics))
            if any(math.isnan(v) for v in values):
                return TrialScheduler.CONTINUE      # an undefined metric is not evidence
            recorded[trial_id] = values
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
