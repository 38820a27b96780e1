"""The searchers Tune gets per objective (search/run/objectives.py): pareto keeps Optuna's two
directions, constrained tells Optuna the AUC floor. Seconds, no Ray."""
import pytest


def _scfg(tmp_path, **kw):
    from search.runner import SearchConfig

    return SearchConfig("fairvision", "race", preset="tiny", storage_path=str(tmp_path), **kw)


def test_pareto_searcher_keeps_two_directions_when_tune_sets_no_metric(tmp_path):
    """TuneConfig gets no metric for pareto (it would silently make the study single-objective)."""
    from search.run.objectives import make_searcher, tune_metric
    from search.record.space import param_space

    scfg = _scfg(tmp_path, objective="pareto")
    assert tune_metric(scfg) == {}
    searcher = make_searcher(scfg)
    assert searcher.set_search_properties(None, None, param_space())
    searcher.suggest("t1")
    assert len(searcher._ot_study.directions) == 2
    searcher.on_trial_complete("t1", {"auc": 0.8, "es_auc": 0.7})
    assert searcher._ot_study.best_trials[0].values == [0.8, 0.7]


def test_constrained_searcher_tells_optuna_the_auc_floor(tmp_path):
    from search.run.objectives import make_searcher, tune_metric
    from search.record.space import param_space

    scfg = _scfg(tmp_path, objective="constrained", min_auc_drop=0.05)
    searcher = make_searcher(scfg, auc_floor=0.75)
    assert searcher.set_search_properties(**tune_metric(scfg), config=param_space())
    for tid, auc, es in (("a", 0.70, 0.69), ("b", 0.80, 0.60)):
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"auc": auc, "es_auc": es})
    trials = searcher._ot_study.trials
    assert [t.constraints["auc_floor"] for t in trials] == [pytest.approx(0.05), pytest.approx(-0.05)]
    assert searcher._ot_study.best_trial.values == [0.60]     # the fairer trial is infeasible



@pytest.mark.parametrize("objective", ["es_auc", "constrained"])
def test_a_resumed_searcher_takes_a_trial_it_never_suggested(tmp_path, objective, capsys):
    """A driver killed after Tune saved a trial but before it saved the searcher's state resumes
    with a trial the searcher does not know: its results and its end are taken (Ray's OptunaSearch
    raised KeyError and the resumed search died), the known trials still reach Optuna."""
    from search.record.space import param_space
    from search.run.objectives import make_searcher, tune_metric

    scfg = _scfg(tmp_path, objective=objective, min_auc_drop=0.05)
    searcher = make_searcher(scfg, auc_floor=0.75)
    assert searcher.set_search_properties(**tune_metric(scfg), config=param_space())
    searcher.suggest("known")
    result = {"auc": 0.8, "es_auc": 0.7, "training_iteration": 1, "epoch": 1}
    for tid in ("stray", "known"):
        searcher.on_trial_result(tid, result)
        searcher.on_trial_result(tid, result)
        searcher.on_trial_complete(tid, result)
    assert [t.values for t in searcher._ot_study.trials] == [[0.7]]
    assert capsys.readouterr().out.count("trial stray was started before the driver stopped") == 1
