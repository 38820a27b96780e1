"""Integer knobs of the VL search spaces (issue 28 item 3): Tune's domain -> Optuna's
IntDistribution -> the sampled trial config -> the TrainConfig field, the study record, the
MLflow param string and the warm start all keep an int inside the range. No Ray, no server:
OptunaSearch suggests without a cluster."""
import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from search.record.space import RANGES, baseline_point, hyperparameters, optuna_distributions, param_space
from search.record.study import trial_record
from search.run import warm_start
from search.run.trainable import trial_config
from trainer.config import make_config

INTEGER_KNOBS = {"fairclip": "fairclip_group_batch_size",
                 "fairclip_dbpm": "dbpm_warmup_epochs",
                 "dualfairvl": "vl_context_length"}


def test_each_vl_mode_searches_its_integer_knobs():
    assert "fairclip_group_batch_size" in hyperparameters("fairclip_dbpm")
    for mode, knob in INTEGER_KNOBS.items():
        assert knob in hyperparameters(mode) and RANGES[knob].integer
        assert isinstance(make_config("fairvlmed", "gender", preset="tiny", mode=mode)
                          .to_dict()[knob], int)        # the TrainConfig field is an int field


@pytest.mark.parametrize("mode", sorted(INTEGER_KNOBS))
def test_tune_space_converts_to_the_same_optuna_distributions(mode):
    names = hyperparameters(mode)
    converted = OptunaSearch.convert_search_space(param_space(mode))
    ours = optuna_distributions(names)
    assert converted == ours        # else a warm start's trials clash with the live study
    for name in names:
        want = optuna.distributions.IntDistribution if RANGES[name].integer \
            else optuna.distributions.FloatDistribution
        assert type(ours[name]) is want
        assert (ours[name].low, ours[name].high) == (RANGES[name].low, RANGES[name].high)


@pytest.mark.parametrize("mode", sorted(INTEGER_KNOBS))
def test_sampled_configs_reach_the_trainconfig_as_ints_in_range(mode):
    names = hyperparameters(mode)
    start = baseline_point("fairvlmed", "gender", mode, preset="tiny")
    assert all(isinstance(start[k], int) for k in names if RANGES[k].integer)
    searcher = OptunaSearch(space=param_space(mode), metric="es_auc", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0),
                            points_to_evaluate=[start])
    base = make_config("fairvlmed", "gender", preset="tiny", mode=mode).to_dict()
    seen = {k: set() for k in names if RANGES[k].integer}
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        if i == 0:
            assert config == start        # the default point first, unchanged
        cfg = trial_config(config, base)
        for k in seen:
            value = getattr(cfg, k)
            assert type(value) is int and RANGES[k].low <= value <= RANGES[k].high, (k, value)
            seen[k].add(value)
        record = trial_record(f"t{i}", config, [], "TERMINATED")
        assert record["params"] == {k: getattr(cfg, k) for k in names}
        assert all(type(record["params"][k]) is int for k in seen)
        searcher.on_trial_complete(f"t{i}", {"es_auc": 0.5 + 0.01 * i})
    assert all(len(v) > 2 for v in seen.values()), seen     # sampled, not stuck at the default


@pytest.mark.parametrize("mode", sorted(INTEGER_KNOBS))
def test_warm_start_reads_mlflow_param_strings_back_as_ints(mode):
    names = hyperparameters(mode)
    knob = INTEGER_KNOBS[mode]
    logged = {k: str(v) for k, v in baseline_point("fairvlmed", "gender", mode).items()}
    logged[knob] = str(float(RANGES[knob].high))           # "64.0": a float-formatted int
    params = {k: RANGES[k].cast(logged[k]) for k in names}   # what warm_start.load keeps
    assert params[knob] == int(RANGES[knob].high) and type(params[knob]) is int
    trials = warm_start.optuna_trials([{"params": params, "auc": 0.7, "es_auc": 0.6}], mode,
                                      "es_auc")
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1))
    study.add_trials(trials)
    assert type(study.trials[0].params[knob]) is int
    ask = study.ask(optuna_distributions(names))
    assert type(ask.params[knob]) is int
    assert RANGES[knob].low <= ask.params[knob] <= RANGES[knob].high
