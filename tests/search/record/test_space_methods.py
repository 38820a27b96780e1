"""Methods as a search dimension: every trainer method has its own searched hyperparameters, and
a non-MultiFair mode runs through the real search (Ray Tune + Optuna + MLflow)."""
import pytest

from search.record.space import RANGES, baseline_point, hyperparameters, param_space
from trainer.methods import available_methods


@pytest.mark.parametrize("mode", available_methods("fusion"))
def test_every_method_has_a_search_space_containing_its_default(mode):
    names = hyperparameters(mode)
    assert names and set(names) <= set(RANGES)
    assert set(param_space(mode)) == set(names)
    point = baseline_point("fairvision", "race", mode, preset="tiny")
    assert set(point) == set(names)
    assert all(RANGES[k].low <= v <= RANGES[k].high for k, v in point.items())


@pytest.mark.parametrize("mode", available_methods("clip") + available_methods("dualfairvl"))
@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_every_vl_mode_has_a_search_space_containing_its_default(mode, preset):
    names = hyperparameters(mode)
    assert names and set(names) <= set(RANGES) and "lr" in names
    point = baseline_point("fairvlmed", "gender", mode, preset=preset)
    assert set(point) == set(names)
    assert all(RANGES[k].low <= v <= RANGES[k].high for k, v in point.items())


def test_space_defaults_and_refusals():
    assert hyperparameters() == ("rho", "lambda_gm", "tau", "delta", "lambda_f")
    assert hyperparameters("ogm_ge") == ("ogm_alpha",) and hyperparameters("cggm") == ("rho",)
    with pytest.raises(ValueError, match="'nonesuch'"):
        hyperparameters("nonesuch")


@pytest.mark.slow
def test_ogm_ge_runs_through_the_search(ray_session, search_config, tmp_path):
    from search.runner import parse_args, run_search
    from tests.search.conftest import study_runs

    assert parse_args("fairvision", "gender", None, ["--mode", "ogm_ge"]).mode == "ogm_ge"
    scfg = search_config(tmp_path, mode="ogm_ge", num_samples=2, max_epochs=1, grace_period=1,
                         scheduler="none", log_best_model=False, final_test=False)
    assert scfg.baseline == {"ogm_alpha": 0.5}
    outcome = run_search(scfg)
    assert outcome.best is not None and set(outcome.best["config"]) == {"ogm_alpha"}
    _, parents, children = study_runs(scfg.tracking_uri)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    alphas = sorted(float(c.data.params["ogm_alpha"]) for c in children)
    assert 0.5 in alphas and alphas[0] != alphas[1]
    assert all(c.data.params["base.mode"] == "ogm_ge" for c in children)
    assert all("train/ogm_coef/slo" in c.data.metrics for c in children)
