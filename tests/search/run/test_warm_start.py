"""--warm-start (search/run/warm_start.py): an earlier study's trials seed the sampler, read from its
folder and from MLflow (the two agree), refused for another space or objective, and a real
search that starts from them."""
import math

import pytest

from search.run import warm_start
from search.run.objectives import make_searcher
from search.record.space import param_space
from search.record.study import read_trials


def _last(t):
    row = [r for r in t["results"] if "es_auc" in r][-1]
    return round(row["es_auc"], 9)


@pytest.mark.slow
def test_folder_and_mlflow_give_the_study_trials(study, search_config, tmp_path):
    scfg, _ = study
    from_folder = warm_start.load(search_config(tmp_path, attribute="race", warm_start=scfg.study_dir))
    expected = sorted(_last(t) for t in read_trials(scfg.study_dir) if t["results"])
    assert sorted(round(t["es_auc"], 9) for t in from_folder) == expected and len(expected) == 5
    from_mlflow = warm_start.load(search_config(tmp_path, warm_start=scfg.experiment,
                                                tracking_uri=scfg.tracking_uri))
    key = lambda t: (round(t["es_auc"], 6), round(t["params"]["rho"], 6))
    assert sorted(map(key, from_mlflow)) == sorted(map(key, from_folder))


@pytest.mark.slow
@pytest.mark.parametrize("kw, says", [(dict(mode="ogm_ge"), "same search space"),
                                      (dict(objective="pareto"), "of the same kind")])
def test_another_space_or_objective_is_refused(study, search_config, tmp_path, kw, says):
    scfg, _ = study
    with pytest.raises(ValueError, match=says):
        warm_start.load(search_config(tmp_path, warm_start=scfg.study_dir, **kw))


def test_not_a_study_is_refused_in_one_line(search_config, tmp_path):

    with pytest.raises(ValueError, match="neither a study folder nor an MLflow experiment"):
        warm_start.load(search_config(tmp_path, warm_start="no-such-experiment"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no study.json"):
        warm_start.load(search_config(tmp_path, warm_start=str(tmp_path / "empty")))


@pytest.mark.slow
def test_the_sampler_starts_with_the_earlier_trials_and_the_paper_point_first(study, search_config, tmp_path):
    scfg, _ = study
    new = search_config(tmp_path, attribute="race", warm_start=scfg.study_dir)
    searcher = make_searcher(new)
    assert searcher.set_search_properties("es_auc", "max", param_space())
    import optuna

    done = searcher._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 5 and all(t.user_attrs.get("warm_start") for t in done)
    assert sorted(round(t.value, 9) for t in done) == sorted(_last(t) for t in read_trials(scfg.study_dir))
    first = searcher.suggest("new-1")      # the paper's point is still evaluated first
    assert all(math.isclose(first[k], v) for k, v in new.baseline.items())
    # constrained: the earlier trials carry this search's AUC floor as Optuna's constraint
    con = make_searcher(search_config(tmp_path, objective="constrained", min_auc_drop=0.05,
                                      warm_start=scfg.study_dir), auc_floor=0.7)
    con.set_search_properties("es_auc", "max", param_space())
    warm = con._ot_study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(warm) == 5
    for t in warm:
        assert t.system_attrs["constraints:auc_floor"] == pytest.approx(0.7 - t.user_attrs["auc"])


@pytest.mark.slow
def test_a_search_runs_from_a_warm_start(study, search_config, tmp_path, capsys):
    from search.runner import main

    scfg, _ = study
    common = ["--local", "--preset", "tiny", "--data-root", scfg.data_root, "--num-samples", "2",
              "--max-epochs", "2", "--grace-period", "1", "--finalists", "0", "--no-figures",
              "--no-tracking", "--cpus-per-trial", "1", "--max-concurrent", "2",
              "--storage-path", str(tmp_path), "--warm-start", scfg.study_dir]
    assert main("fairvision", "race", None, common + ["--mode", "ogm_ge"]) == 2
    assert "same search space" in capsys.readouterr().err      # refused before any work
    assert not (tmp_path / "fairvision-race-ogm_ge").exists()
    assert main("fairvision", "race", None, common) == 0
    assert "warm start: 5 trials of" in capsys.readouterr().out
