"""Robustness in the search (issue 22): objectives and floors on the validation figures with a
modality removed (the trainer's val/missing/<m>/...), their refusals, the front and finalists
over them, and Optuna told the floors. No Ray here: test_robust_search.py runs the search."""
import itertools
import math

import pytest

from search.decide.select import feasible, finalists, front
from search.run.objectives import BadObjective, metric_key
from search.runner import BadFlag, SearchConfig, main


def _scfg(tmp_path, **kw):
    return SearchConfig("fairvision", "race", preset="tiny", storage_path=str(tmp_path), **kw)


def test_objective_names_map_to_the_trainers_result_keys():
    mods = ("slo", "oct")
    assert metric_key("es_auc", mods) == "es_auc" and metric_key("auc", mods) == "auc"
    assert metric_key("es_auc_missing_oct", mods) == "val/missing/oct/es_auc"
    assert metric_key("auc_missing_slo", mods) == "val/missing/slo/auc"
    with pytest.raises(BadObjective, match="unknown modality 'note'.*slo, oct"):
        metric_key("es_auc_missing_note", mods)
    with pytest.raises(BadObjective, match="unknown objective"):
        metric_key("worst_group_auc", mods)
    with pytest.raises(BadObjective, match="only oct"):
        metric_key("es_auc_missing_oct", ("oct",))


@pytest.mark.parametrize("kw, flag", [
    (dict(objective="pareto", objectives="es_auc,es_auc_missing_note"),
     "--objectives es_auc_missing_note: unknown modality 'note'"),
    (dict(objective="pareto", objectives="es_auc"), "give two or more distinct objectives"),
    (dict(objective="pareto", objectives="es_auc,es_auc"), "give two or more distinct objectives"),
    (dict(objectives="es_auc,es_auc_missing_oct"), "only --objective pareto trades objectives off"),
    (dict(min_missing_es_auc="oct=1.5"), "--min-missing-es-auc oct=1.5: give modality=floor"),
    (dict(min_missing_es_auc="oct"), "--min-missing-es-auc oct: give modality=floor"),
    (dict(min_missing_es_auc="fundus=0.6"), "--min-missing-es-auc es_auc_missing_fundus: unknown modality 'fundus'"),
    (dict(shift_root="/nonexistent/site-b"), "--shift-root /nonexistent/site-b: no such folder"),
    (dict(warm_start="x", min_missing_es_auc="oct=0.6"), "--warm-start x: an earlier study seeds only"),
])
def test_bad_robustness_flags_are_refused(kw, flag, tmp_path):
    with pytest.raises(BadFlag) as info:
        _scfg(tmp_path, **kw)
    assert flag in str(info.value) and "\n" not in str(info.value)


def test_unknown_modality_is_one_line_from_the_command_line(capsys, tmp_path):
    argv = ["--objective", "pareto", "--objectives", "es_auc,es_auc_missing_xyz", "--storage-path", str(tmp_path)]
    assert main("fairvision", "gender", argv=argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown modality 'xyz'" in err and "slo, oct" in err
    assert not list(tmp_path.iterdir())


def test_fairvlmed_modalities_and_set_modalities_are_the_studys(tmp_path):
    from search.run.objectives import objective_keys

    assert objective_keys(SearchConfig("fairvlmed", "race", preset="tiny", storage_path=str(tmp_path),
                                       objective="pareto", objectives="es_auc,auc_missing_note")) \
        == ["es_auc", "val/missing/note/auc"]
    with pytest.raises(BadFlag, match="unknown modality 'oct'"):
        _scfg(tmp_path, objective="pareto", objectives="es_auc,es_auc_missing_oct", sets=["modalities=slo,note"])


def _trials(rows):
    return [{"trial_id": k, "val": {"auc": a, "es_auc": e, "val/missing/oct/es_auc": m}}
            for k, a, e, m in rows]


ROWS = [("a", 0.80, 0.70, 0.50), ("b", 0.78, 0.72, 0.40), ("c", 0.70, 0.60, 0.66),
        ("d", 0.79, 0.69, 0.49), ("e", 0.60, 0.55, math.nan), ("f", 0.75, 0.71, 0.62)]


def _skyline(points: dict[str, tuple]) -> set[str]:
    """2-D non-dominated set by a sweep (independent of select.front): sort by x descending
    (y descending on ties); a point is kept when its y beats every y seen before it."""
    best, keep = -math.inf, set()
    for name, (x, y) in sorted(points.items(), key=lambda kv: (-kv[1][0], -kv[1][1])):
        if y > best:
            keep.add(name)
            best = y
    return keep


def test_front_over_es_auc_and_missing_oct_matches_a_sweep():
    trials = _trials(ROWS)
    keys = ("es_auc", "val/missing/oct/es_auc")
    points = {k: (e, m if math.isfinite(m) else -math.inf) for k, _, e, m in ROWS}
    got = {t["trial_id"] for t in front(trials, keys)}
    assert got == _skyline(points) == {"b", "f", "c"}
    # the default front (AUC, ES-AUC) is another set: the objectives decide it
    assert {t["trial_id"] for t in front(trials)} == _skyline({k: (a, e) for k, a, e, _ in ROWS}) == {"a", "b"}
    # three objectives: brute force over every pair
    keys3 = ("auc", "es_auc", "val/missing/oct/es_auc")
    vec = {t["trial_id"]: [t["val"][k] if math.isfinite(t["val"][k]) else -math.inf for k in keys3] for t in trials}
    dominated = {p for p, q in itertools.permutations(vec, 2)
                 if all(x >= y for x, y in zip(vec[q], vec[p])) and vec[q] != vec[p]}
    assert {t["trial_id"] for t in front(trials, keys3)} == set(vec) - dominated


def test_floor_puts_infeasible_trials_after_feasible_ones(tmp_path):
    trials = _trials(ROWS)
    scfg = _scfg(tmp_path, min_missing_es_auc="oct=0.6")
    assert [t["trial_id"] for t in trials if feasible(t, {"val/missing/oct/es_auc": 0.6})] == ["c", "f"]
    # es_auc objective: feasible by ES-AUC first (f 0.71, c 0.60), then the rest by ES-AUC
    assert [t["trial_id"] for t in finalists(scfg, trials, None, 4)] == ["f", "c", "b", "a"]
    # pareto over (es_auc, missing oct) with the floor: the feasible front first
    scfg = _scfg(tmp_path, objective="pareto", objectives="es_auc,es_auc_missing_oct", min_missing_es_auc="oct=0.6")
    assert [t["trial_id"] for t in finalists(scfg, trials, None, 3)] == ["f", "c", "b"]


def test_searcher_tells_optuna_every_floor_and_pareto_directions(tmp_path):
    from search.run.objectives import make_scheduler, make_searcher, tune_metric
    from search.record.space import param_space

    scfg = _scfg(tmp_path, objective="pareto", objectives="es_auc,es_auc_missing_oct", min_missing_es_auc="oct=0.6")
    searcher = make_searcher(scfg)
    assert searcher.set_search_properties(None, None, param_space())
    results = [("a", 0.70, 0.65), ("b", 0.72, 0.55), ("c", 0.74, math.nan)]
    for tid, es, missing in results:
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {"auc": 0.8, "es_auc": es, "val/missing/oct/es_auc": missing})
    study = searcher._ot_study
    assert len(study.directions) == 2
    got = [t.constraints["floor:val/missing/oct/es_auc"] for t in study.trials]
    assert got == [pytest.approx(-0.05), pytest.approx(0.05), 1.0]   # NaN: infeasible
    assert [t.values for t in study.trials[:2]] == [[0.70, 0.65], [0.72, 0.55]]
    assert make_scheduler(scfg).metrics == ["es_auc", "val/missing/oct/es_auc"]
    # constrained: the AUC floor and the missing floor, both named
    scfg = _scfg(tmp_path, objective="constrained", min_auc_drop=0.05, min_missing_es_auc="oct=0.6")
    searcher = make_searcher(scfg, auc_floor=0.75)
    assert searcher.set_search_properties(**tune_metric(scfg), config=param_space())
    searcher.suggest("x")
    searcher.on_trial_complete("x", {"auc": 0.70, "es_auc": 0.7, "val/missing/oct/es_auc": 0.62})
    assert searcher._ot_study.trials[0].constraints == {"auc_floor": pytest.approx(0.05),
                                                         "floor:val/missing/oct/es_auc": pytest.approx(-0.02)}


def test_constrained_searcher_pickled_before_the_floors_still_constrains(tmp_path):
    """A constrained study saved before --min-missing-es-auc holds auc_floor only."""
    from search.run.objectives import make_searcher, tune_metric
    from search.record.space import param_space

    scfg = _scfg(tmp_path, objective="constrained", min_auc_drop=0.05)
    searcher = make_searcher(scfg, auc_floor=0.75)
    del searcher.floors
    assert searcher.set_search_properties(**tune_metric(scfg), config=param_space())
    searcher.suggest("x")
    searcher.on_trial_complete("x", {"auc": 0.80, "es_auc": 0.6})
    assert searcher._ot_study.trials[0].constraints == {"auc_floor": pytest.approx(-0.05)}


def test_robustness_figures_flatten_for_mlflow_and_print(capsys):
    from search.record.summary import print_robustness, robustness_metrics, robustness_of

    group = {"female": 0.7, "male": None}
    scored = {"point": {"auc": 0.81, "es_auc": 0.74, "group_auc": group},
              "missing": {"oct": {"removed": {"auc": 0.66, "es_auc": 0.60, "group_auc": group},
                                  "absent": {"n": 12, "auc": 0.7, "es_auc": None, "group_auc": {}}},
                          "slo": {"removed": {"auc": 0.5, "es_auc": 0.45}, "absent": {"n": 0, "auc": None}}},
              "shift": {"auc": 0.72, "es_auc": 0.61, "n": 300, "dpd": 0.1, "deodds": None,
                        "missing": {"oct": {"removed": {"auc": 0.6, "es_auc": 0.5}}}}}
    rob = robustness_of(scored)
    flat = robustness_metrics(rob)
    assert flat == {"test/missing/oct/auc": 0.66, "test/missing/oct/es_auc": 0.60, "test/absent/oct/auc": 0.7,
                    "test/absent/oct/n": 12.0, "test/missing/slo/auc": 0.5, "test/missing/slo/es_auc": 0.45,
                    "test/absent/slo/n": 0.0, "test/shift/auc": 0.72, "test/shift/es_auc": 0.61,
                    "test/shift/dpd": 0.1, "test/shift/n": 300.0,
                    "test/shift/missing/oct/auc": 0.6, "test/shift/missing/oct/es_auc": 0.5}
    print_robustness((0.81, 0.74), flat)
    out = capsys.readouterr().out
    assert "complete, same site" in out and "auc 0.8100  es_auc 0.7400" in out
    assert "without oct (removed from all)" in out and "auc 0.6600  es_auc 0.6000" in out
    assert "samples lacking oct (n 12)" in out and "es_auc n/a" in out
    assert "other site, n 300" in out and "auc 0.7200  es_auc 0.6100" in out
