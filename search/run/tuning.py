"""The one place a Tuner is built, new or restored: the search (search.run.stage.search) and every
grid stage (confirmation and its looks, the sweeps: confirm.grid_run) share the trainable's
resources, the Tune folder (search.record.study.stage_path, the s3 ?query kept last), the trial folder
names, the failure retries and the checkpoints kept. Nothing here is pickled by Tune: the
trainable (search.run.trainable.train_trial) and the callbacks keep their modules, so old studies
resume."""
from __future__ import annotations

from ray import tune

from search.record.study import stage_path
from search.record.trial_callback import MLflowTrialCallback
from search.run.trainable import train_trial, trial_dirname


def trainable_of(scfg, setup: dict):
    """train_trial with the trial constants and one trial's resources (--cpus/--gpus-per-trial)."""
    return tune.with_resources(tune.with_parameters(train_trial, setup=setup),
                               {"cpu": scfg.cpus_per_trial, "gpu": scfg.gpus_per_trial})


def make_tuner(scfg, setup: dict, name: str, *, restore: bool, slots: int = 1, param_space=None,
               callbacks=(), verbose: int = 1, **tune_config):
    """A Tuner for the Tune run `<storage-path>/<name>`: restored (errored trials retried) when
    `restore`, else new with `param_space`, `callbacks` and TuneConfig(**tune_config) (metric,
    mode, searcher, scheduler, num_samples) at `slots` concurrent trials."""
    trainable = trainable_of(scfg, setup)
    if restore:
        return tune.Tuner.restore(stage_path(scfg.storage_path, name), trainable, resume_errored=True)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(**tune_config, max_concurrent_trials=slots,
                                    trial_dirname_creator=trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=scfg.storage_path, callbacks=list(callbacks), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=scfg.max_failures),
            # The two most recent checkpoints: every checkpoint holds the best epoch's weights so
            # far (trainer BEST_FILE), and a SIGKILLed driver's snapshot may name the one before
            # the latest. Keeping by score instead deleted exactly that one (seen on S3).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def tracking_callback(tuner):
    """The Tuner's MLflowTrialCallback (a restored Tuner's: it holds the study's own tracker and
    the run ids of the trials it logged), or None."""
    for cb in tuner._local_tuner.get_run_config().callbacks or []:
        if isinstance(cb, MLflowTrialCallback):
            return cb
    return None
