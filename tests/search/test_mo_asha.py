"""MO-ASHA (search/run/mo_asha.py): non-dominated sorting checked against the definition, a scripted
rung worked by hand (and Ray's own ES-AUC ASHA on the same results, which stops a trial the
front needs), and a real pareto search whose stops are the rule's."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from search.run.mo_asha import MOASHAScheduler, crowding_distance, nondominated_fronts, nsga_order, promotes

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def brute_fronts(points):
    """Fronts straight from the definition: peel off the points no remaining point dominates."""
    left, fronts = set(range(len(points))), []
    dom = lambda a, b: all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
    while left:
        front = sorted(j for j in left if not any(dom(points[i], points[j]) for i in left if i != j))
        fronts.append(front)
        left -= set(front)
    return fronts


@pytest.mark.parametrize("seed", range(5))
def test_fronts_match_the_definition(seed):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 6, size=(30, 2)).astype(float)    # small integers: many ties
    assert [sorted(f) for f in nondominated_fronts(pts)] == brute_fronts(pts.tolist())


def test_crowding_distance_hand_worked():
    # a front of four points on a line: ends infinite, inner points (x gap + y gap) / span
    pts = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(pts)
    assert math.isinf(d[0]) and math.isinf(d[3])
    np.testing.assert_allclose(d[1:3], [(3 - 0) / 4 + (4 - 1) / 4, (4 - 1) / 4 + (3 - 0) / 4])
    pts = np.array([[0.0, 4.0], [1.0, 3.5], [1.5, 3.0], [4.0, 0.0]])
    assert nsga_order(pts)[2:] == [2, 1]   # [2] is less crowded: (4-1)/4 + (3.5-0)/4 > (1.5)/4 + (1)/4


def _feed(scheduler, sequence):
    actions = []
    for tid, auc, es in sequence:
        trial = SimpleNamespace(trial_id=tid)
        if isinstance(scheduler, ASHAScheduler):
            scheduler.on_trial_add(None, trial)
        actions.append(scheduler.on_trial_result(None, trial, {"epoch": 1, "auc": auc, "es_auc": es}))
    return actions


# (trial, val AUC, val ES-AUC) arriving at the first rung, in this order
RUNG = [("t1", 0.80, 0.70), ("t2", 0.70, 0.60), ("t3", 0.90, 0.50),
        ("t4", 0.95, 0.72), ("t5", 0.60, 0.75), ("t6", 0.99, 0.69)]


def test_scripted_rung_by_hand():
    """eta 3: keep ceil(n/3) of the n recorded so far. t1 alone: kept. t2: dominated by t1, n=2,
    keep 1: stopped. t3: front {t1, t3}, both ends (crowding inf), tie by arrival: t1 first,
    keep 1: stopped. t4 dominates t1 and t3: first alone, keep 2: kept. t5 (highest ES-AUC): front
    {t4, t5}, keep 2: kept. t6 (highest AUC): front {t4, t5, t6}, ends t5 and t6 first, keep 2: kept."""
    sched = MOASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    assert sorted(sched.rungs) == [1, 3, 9]   # as Ray's ASHA: the last one is max_t itself
    assert _feed(sched, RUNG) == [CONTINUE, STOP, STOP, CONTINUE, CONTINUE, CONTINUE]
    assert [d["promoted"] for d in sched.decisions] == [True, False, False, True, True, True]
    # Ray's ASHA on ES-AUC alone stops t6, the trial with the highest AUC (on the front)
    asha = ASHAScheduler(time_attr="epoch", metric="es_auc", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3)
    assert _feed(asha, RUNG)[-1] == STOP


def test_last_epoch_stops_and_a_trial_is_judged_once_per_rung():
    sched = MOASHAScheduler(max_t=4, grace_period=1, reduction_factor=2)   # rungs 1, 2
    trial = SimpleNamespace(trial_id="a")
    assert sched.on_trial_result(None, trial, {"epoch": 1, "auc": 0.5, "es_auc": 0.5}) == CONTINUE
    assert sched.on_trial_result(None, trial, {"epoch": 1, "auc": 0.1, "es_auc": 0.1}) == CONTINUE
    assert len(sched.decisions) == 1
    assert sched.on_trial_result(None, trial, {"epoch": 4, "auc": 0.5, "es_auc": 0.5}) == STOP
    nan = sched.on_trial_result(None, SimpleNamespace(trial_id="b"), {"epoch": 1, "auc": 0.5, "es_auc": math.nan})
    assert nan == CONTINUE and "b" not in sched.rungs[1]


def test_pareto_and_constrained_use_mo_asha_single_objective_keeps_asha(tmp_path):
    from search.run.objectives import make_scheduler
    from search.runner import SearchConfig

    def make(**kw):
        return make_scheduler(SearchConfig("fairvision", "race", preset="tiny", storage_path=str(tmp_path), **kw))

    assert isinstance(make(objective="pareto"), MOASHAScheduler)
    assert isinstance(make(objective="constrained", min_auc_drop=0.02), MOASHAScheduler)
    assert type(make(objective="es_auc")) is ASHAScheduler
    assert type(make(objective="pareto", scheduler="asha_es_auc")) is ASHAScheduler


@pytest.mark.slow
def test_a_real_pareto_search_stops_by_the_rule(ray_session, search_config, tmp_path, monkeypatch):
    from search.run import objectives
    from search.runner import run_search

    made = []
    real = objectives.make_scheduler
    monkeypatch.setattr(objectives, "make_scheduler", lambda scfg: made.append(real(scfg)) or made[-1])
    scfg = search_config(tmp_path, objective="pareto", num_samples=5, max_epochs=3, grace_period=1,
                         reduction_factor=2, no_tracking=True)
    outcome = run_search(scfg)
    (sched,) = made
    assert isinstance(sched, MOASHAScheduler) and sched.decisions
    epochs = {t["trial_id"]: t["epochs"] for t in outcome.trials}
    for d in sched.decisions:
        # the rule, replayed on what was recorded at the rung when the trial arrived
        assert d["promoted"] == promotes(d["recorded"], d["trial_id"], 2)
        if not d["promoted"]:
            assert epochs[d["trial_id"]] == d["rung"], (d, epochs)    # stopped right at the rung
    assert outcome.stopped_early == sum(not d["promoted"] for d in sched.decisions)


def test_keep_front_variant_and_ties():
    """keep_front also promotes every point of the rung's first front: t3 (a trade-off point,
    stopped by the default) goes on. Equal points go on together, as under ASHA's cutoff."""
    sched = MOASHAScheduler(max_t=9, grace_period=1, reduction_factor=3, keep_front=True)
    assert _feed(sched, RUNG)[:3] == [CONTINUE, STOP, CONTINUE]
    recorded = {"a": (0.8, 0.7), "b": (0.5, 0.5), "c": (0.8, 0.7)}
    assert promotes(recorded, "a", 3) and promotes(recorded, "c", 3) and not promotes(recorded, "b", 3)
