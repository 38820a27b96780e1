"""A reused Tune worker (reuse_actors=True, as the search runs) carries nothing from the trial
before it: seed, model, optimiser and data order of a trial are those of a fresh process."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

HYPER = {"rho": 1.3, "lambda_gm": 0.2, "tau": 0.03, "delta": 0.4, "lambda_f": 0.6}


def test_reused_worker_trains_exactly_like_a_fresh_process(ray_session, data_root, cache_dir, tmp_path):
    from ray import tune

    from search.trainable import train_trial, trial_config
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
