"""A reused Tune worker (reuse_actors=True, as the search runs) carries nothing from the trial
before it: seed, model, optimiser and data order of a trial are those of a fresh process."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

HYPER = {"rho": 1.3, "lambda_gm": 0.2, "tau": 0.03, "delta": 0.4, "lambda_f": 0.6}


def test_reused_worker_trains_exactly_like_a_fresh_process(ray_session, data_root, cache_dir, tmp_path):
    from ray import tune

    from search.run.trainable import train_trial, trial_config
    from trainer.config import make_config
    from trainer.loop import fit

    base = make_config("fairvision", "gender", preset="tiny", data_root=data_root, epochs=2,
                       mode="full", evaluate_test=False).to_dict()
    setup = {"base": base, "synthetic": None, "test_hooks": {}}
    # seed 0, then a different trial (seed 5: other weights, other batches, other dropout), then
    # seed 0 again, one at a time in the same worker process
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, setup=setup), {"cpu": 1}),
        param_space={**HYPER, "seed": tune.grid_search([0, 5, 0])},
        tune_config=tune.TuneConfig(metric="es_auc", mode="max", max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="reuse", storage_path=str(tmp_path / "results"), verbose=0))
    results = sorted(tuner.fit(), key=lambda r: r.metrics["trial_id"])   # grid order = id order
    assert not any(r.error for r in results)
    histories = [r.metrics_dataframe for r in results]
    assert len({int(pid) for h in histories for pid in h["worker_pid"]}) == 1, \
        "the three trials did not share a worker: nothing about reuse was tested"
    keys = ["val/auc", "val/es_auc", "val/dpd", "train/loss"]
    first, other, again = (h[keys].to_numpy() for h in histories)
    assert (first == again).all(), "the same trial after another one in the same worker differs"
    assert not (first == other).all(), "seed 5 trained exactly like seed 0: the check is blind"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the Ray worker (1 CPU): the same float summation order
    try:
        fresh = fit(trial_config({**HYPER, "seed": 0}, base), progress=False)
    finally:
        torch.set_num_threads(threads)
    expected = [[row[k] for k in keys] for row in fresh["history"]]
    np.testing.assert_allclose(first, np.array(expected), rtol=1e-6, atol=1e-7)


def test_a_stopped_trial_ends_and_hands_its_worker_on(ray_session, data_root, cache_dir, tmp_path):
    """Checkpoints are written and reported on a second thread while the next epoch trains
    (search.run.trainable.BackgroundReporter). A trial that Tune stops (here a stopper at epoch 2 of 4,
    the way ASHA stops one at a rung) must end although its training thread is already in epoch
    3: each trial reports exactly epochs 1-2, in order, its epoch-2 checkpoint is complete on
    storage, and all trials run in one worker (a training thread that did not end within Tune's
    reset timeout would cost a new worker per trial)."""
    from ray import tune

    from search.run.trainable import checkpoint_policy, complete_checkpoints, train_trial
    from trainer.config import make_config

    base = make_config("fairvision", "gender", preset="tiny", data_root=data_root, epochs=4,
                       batch_size=8, mode="full", evaluate_test=False).to_dict()
    # steps after epoch 2 take 0.6 s each and are noted in a file: a training thread that ran on
    # to the end of epoch 3 would take 12 of them; one that ends after the step in which the
    # stop came takes one (two when the stop is slow to arrive)
    log = tmp_path / "slow_steps.log"
    hooks = {"slow_steps_after_epoch": [2, 0.6], "slow_steps_log": str(log)}
    setup = {"base": base, "synthetic": None, "test_hooks": hooks, "checkpoints": checkpoint_policy(1)}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(train_trial, setup=setup), {"cpu": 1}),
        param_space={**HYPER, "seed": tune.grid_search([0, 1, 2])},
        tune_config=tune.TuneConfig(metric="es_auc", mode="max", max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="stopped", storage_path=str(tmp_path / "results"),
                                  stop={"epoch": 2}, verbose=0))
    results = list(tuner.fit())
    assert len(results) == 3 and not any(r.error for r in results)
    for r in results:
        assert list(r.metrics_dataframe["epoch"]) == [1, 2]
        newest = next(complete_checkpoints(r.checkpoint))
        assert newest[1]["epoch"] == 2 and newest[1]["resume"]
    pids = {int(p) for r in results for p in r.metrics_dataframe["worker_pid"]}
    assert len(pids) == 1, f"stopped trials did not hand their worker on: {pids}"
    slow = log.read_text().split("\n")[:-1]
    # (the last trial may be ended with its worker, before its first slow step is noted)
    assert 1 <= len(slow) <= 6, f"{len(slow)} steps of epoch 3 ran after the stops (3 trials): {slow}"
