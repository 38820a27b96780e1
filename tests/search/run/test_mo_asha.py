"""MO-ASHA (search/run/mo_asha.py): non-dominated sorting checked against the definition, a scripted
rung worked by hand (and Ray's own ES-AUC ASHA on the same results, which stops a trial the
front needs), Ray's own ASHAScheduler making the same decisions on rungs of 1..20 where the
objectives agree, the front's extremes kept, NaN recorded as the worst, and a real pareto search
whose stops are the rule's."""
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
    """eta 3; Ray's count: a trial arriving to k recorded results goes on when its place in the
    order of all of them is at least the recorded point at index h = (k-1)(1 - 1/3) (ascending),
    and between the two points around h when their interpolation does not dominate it.
    t1 alone: kept. t2 (k=1, h=0): dominated by t1, under it: stopped. t3 (k=2, h=0.67): front
    {t1, t3}, both ends (infinite crowding): tied, and t3, the one judged, goes first: t3 t1 t2,
    above both points around h: kept (arrival order ranked t1 first before, and stopped t3). t4 dominates
    all (k=3): kept. t5 (k=4, h=2): front {t4, t5}, order t4 t5 t3 t1 t2, t5 above 3 recorded,
    at index 2: kept. t6 (k=5, h=2.67): front {t6, t4, t5}, t6 the best AUC first: kept."""
    sched = MOASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    assert sorted(sched.rungs) == [1, 3, 9]   # as Ray's ASHA: the last one is max_t itself
    assert _feed(sched, RUNG) == [CONTINUE, STOP, CONTINUE, CONTINUE, CONTINUE, CONTINUE]
    assert [d["promoted"] for d in sched.decisions] == [True, False, True, True, True, True]
    # Ray's ASHA on ES-AUC alone stops t6, the trial with the highest AUC (on the front)
    asha = ASHAScheduler(time_attr="epoch", metric="es_auc", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3)
    assert _feed(asha, RUNG)[-1] == STOP


def test_a_front_s_extremes_survive_whatever_the_arrival_order():
    """The rung {(0.70, 0.80), (0.75, 0.75), (0.90, 0.60)} (AUC, ES-AUC), eta 3: all three on one
    front. Whichever order they arrive in, the best-AUC point and the best-ES-AUC point go on (an
    end ties with the other end: infinite crowding distance, and a tie goes on); the middle one,
    arriving last, is stopped (under both ends). Before the fix the tie between the two ends went
    by arrival and the best-AUC point arriving last was stopped."""
    from itertools import permutations

    pts = {"lo_auc": (0.70, 0.80), "mid": (0.75, 0.75), "hi_auc": (0.90, 0.60)}
    for order in permutations(pts):
        sched = MOASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
        acts = dict(zip(order, _feed(sched, [(t, *pts[t]) for t in order])))
        assert acts["hi_auc"] == CONTINUE and acts["lo_auc"] == CONTINUE, (order, acts)
        if order[-1] == "mid":
            assert acts["mid"] == STOP
    # the order itself: the best AUC first among the infinite-crowding ends, unless the other
    # end is the one being judged
    assert nsga_order(np.array(list(pts.values()))) == [2, 0, 1]
    assert nsga_order(np.array(list(pts.values())), first=0) == [0, 2, 1]


@pytest.mark.parametrize("eta", [2, 3, 4])
def test_same_decisions_as_ray_asha_on_rungs_of_1_to_20(eta):
    """Where the two objectives agree (points (v, v): one order), MO-ASHA must keep exactly what
    Ray's ASHAScheduler keeps on the same rung, trial for trial: n = 1..20 arrivals, 5 random
    arrival orders each, the continued counts compared for every n."""
    for seed in range(5):
        values = np.random.default_rng(seed).uniform(0.5, 0.9, 20)
        ray_asha = ASHAScheduler(time_attr="epoch", metric="es_auc", mode="max", max_t=100,
                                 grace_period=1, reduction_factor=eta)
        mo = MOASHAScheduler(max_t=100, grace_period=1, reduction_factor=eta)
        seq = [(f"t{i}", float(v), float(v)) for i, v in enumerate(values)]
        got, want = _feed(mo, seq), _feed(ray_asha, seq)
        assert got == want, (eta, seed)
        kept = np.cumsum([a == CONTINUE for a in got])
        assert list(kept) == list(np.cumsum([a == CONTINUE for a in want]))   # the count at n = 1..20
    # and not the old count (top ceil(n / eta) of all n): at n=3, eta 3, the second-best new
    # arrival goes on under Ray (above the interpolated cutoff), where the old rule kept 1 of 3
    seq = [("a", 0.50, 0.50), ("b", 0.80, 0.80), ("c", 0.79, 0.79)]
    assert _feed(MOASHAScheduler(max_t=9, reduction_factor=3), seq)[-1] == CONTINUE


def test_nan_is_recorded_as_the_worst_and_stopped():
    sched = MOASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    acts = _feed(sched, [("a", 0.8, 0.7), ("n", 0.9, math.nan), ("b", 0.6, 0.5)])
    assert acts == [CONTINUE, STOP, CONTINUE]          # n: worst; b is above n, at h = 0.67 of (n, a)
    assert sched.rungs[1]["n"] == (-math.inf, -math.inf)
    # once recorded, a NaN trial is not judged again at that rung on a later, better epoch
    assert sched.on_trial_result(None, SimpleNamespace(trial_id="n"), {"epoch": 2, "auc": 0.99, "es_auc": 0.99}) == CONTINUE
    assert sched.rungs[1]["n"] == (-math.inf, -math.inf) and len(sched.decisions) == 3
    # a trial whose metric stays NaN is stopped at the next rung holding a defined result
    lone = MOASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    assert _feed(lone, [("x", math.nan, math.nan)]) == [CONTINUE]   # nothing recorded: no cutoff (Ray)
    _feed(lone, [("y", 0.7, 0.7)])
    step = lambda tid, auc, es: lone.on_trial_result(None, SimpleNamespace(trial_id=tid),   # noqa: E731
                                                     {"epoch": 3, "auc": auc, "es_auc": es})
    assert step("y", 0.7, 0.7) == CONTINUE and step("x", math.nan, math.nan) == STOP


def test_last_epoch_stops_and_a_trial_is_judged_once_per_rung():
    sched = MOASHAScheduler(max_t=4, grace_period=1, reduction_factor=2)   # rungs 1, 2
    trial = SimpleNamespace(trial_id="a")
    assert sched.on_trial_result(None, trial, {"epoch": 1, "auc": 0.5, "es_auc": 0.5}) == CONTINUE
    assert sched.on_trial_result(None, trial, {"epoch": 1, "auc": 0.1, "es_auc": 0.1}) == CONTINUE
    assert len(sched.decisions) == 1
    assert sched.on_trial_result(None, trial, {"epoch": 4, "auc": 0.5, "es_auc": 0.5}) == STOP
    nan = sched.on_trial_result(None, SimpleNamespace(trial_id="b"), {"epoch": 1, "auc": 0.5, "es_auc": math.nan})
    assert nan == STOP and sched.rungs[1]["b"] == (-math.inf, -math.inf)   # the worst, below a


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
