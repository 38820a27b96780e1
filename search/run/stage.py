"""The search stage: the Optuna/ASHA (or MO-ASHA) Tune run over the trainer, new or resumed,
with its MLflow parent run started and the cluster's slots reserved (runner.run_search calls it
between prepare and decide)."""
from __future__ import annotations

import time

from search.record import study
from search.record.migrate import migrate_study
from search.record.space import param_space
from search.record.tracking import git_commit
from search.record.trial_callback import MLflowTrialCallback
from search.run import objectives
from search.run.cluster_size import reserved, trial_concurrency
from search.run.progress import ProgressCallback
from search.run.resume import repair_after_kill
from search.run.storage import ResumeStatePruner
from search.run.tuning import make_tuner, tracking_callback


def max_concurrent(scfg) -> int:
    """Trials at once: --max-concurrent, else what the cluster can become (search/run/cluster_size.py)."""
    return trial_concurrency(scfg, scfg.num_samples)


def search(scfg, setup: dict, tracker, auc_floor, timings: dict | None = None):
    """The Optuna/ASHA Tune run (new or resumed); returns Tune's ResultGrid and the tracker
    (a resumed study's own). `timings` receives the MLflow callback's seconds and when each trial
    was started (benchmarks/search_vs_optuna.py)."""
    if scfg.resume:
        print(f"[search] resuming {scfg.study_dir}", flush=True)
        old = migrate_study(scfg.storage_path, scfg.name)   # before Tune unpickles any module name
        if old is not None:
            print(f"[search] resume: study format {old} migrated to the current one "
                  "(pickled module names rewritten once)", flush=True)
        repair_after_kill(scfg.study_dir)   # a killed driver's snapshot may lag its trials
        tuner = make_tuner(scfg, setup, scfg.name, restore=True)
        callback = tracking_callback(tuner)   # the study's own tracker (same store, same parent run)
        tracker = callback.tracker if callback else tracker
    clock = time.perf_counter()
    if tracker is not None:
        tracker.start_study(tags=study.study_tags(scfg.to_dict(), git_commit()),
                            params=study.study_params(scfg.to_dict()))
        tracker.log_card(setup["card_path"])   # the dataset card: aggregate counts only
        print(f"[search] MLflow: {tracker.tracking_uri} experiment {tracker.experiment_id} "
              f"parent run {tracker.parent_run_id}", flush=True)
    if timings is not None:
        timings["mlflow_start_s"] = time.perf_counter() - clock   # store, experiment, parent run

    slots = max_concurrent(scfg)
    if not scfg.resume:
        tuner = new_tuner(scfg, setup, tracker, auc_floor, slots)
    if timings is not None:
        timings["tune_started"] = time.time()
    with reserved(scfg, slots):   # the autoscaler starts every slot's node now, not one at a time
        results = tuner.fit()
    logger = tracking_callback(tuner)
    if logger is not None and logger.gave_up:
        tracker = None   # MLflow still down after the flush (one line said so): the study ends without it
    if scfg.resume and tracker is not None:
        held = {study.trial_id_of(r.path) for r in results}
        lost = tracker.close_lost_trials(held)
        if lost:
            print(f"[search] resume: trial(s) {', '.join(lost)} had started after the killed "
                  f"driver's last snapshot; their MLflow runs are marked lost_at_driver_restart",
                  flush=True)
    if timings is not None:
        for cb in tuner._local_tuner.get_run_config().callbacks or []:
            if isinstance(cb, ProgressCallback):
                timings["trial_started"], timings["trial_ended"] = dict(cb.started), dict(cb.ended)
            elif hasattr(cb, "seconds"):
                timings["mlflow_callback_s"] = cb.seconds
    return results, tracker


def new_tuner(scfg, setup, tracker, auc_floor, slots: int):
    callbacks = [ProgressCallback(scfg.max_epochs), ResumeStatePruner()]   # ended trials: best model only
    if tracker is not None:
        tags = study.study_tags(scfg.to_dict(), git_commit())
        callbacks.append(MLflowTrialCallback(tracker, scfg.max_epochs, tags, setup["base"],
                                             unlogged_dir=str(scfg.results_dir)))
    return make_tuner(scfg, setup, scfg.name, restore=False, slots=slots, param_space=param_space(scfg.mode),
                      callbacks=callbacks, verbose=scfg.verbose, **objectives.tune_metric(scfg),
                      search_alg=objectives.make_searcher(scfg, auc_floor),
                      scheduler=objectives.make_scheduler(scfg), num_samples=scfg.num_samples)
