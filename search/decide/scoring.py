"""The one scoring path of a study's models on the test split (the test touched once per
model): the final test of the search's best trial (no confirmation), the deployed model's
robustness block (each modality missing, the other site), each as one Ray task with a trial's
resources (search.run.remote); the paired test against plain fusion is search.decide.paired,
the registered model's batch scoring search.decide.registry. Aggregates only go to MLflow."""
from __future__ import annotations

import math

from search.decide import select
from search.decide.mlmodel import log_run_model
from search.record.summary import SearchOutcome, robustness_metrics, robustness_of, trials_from_results


def summarize_results(scfg, results, tracker, wall_s, test_best: bool = True,
                      setup: dict | None = None) -> SearchOutcome:
    """Trial records, the best search trial, counts. With test_best (no confirmation stage) the
    best trial's model is logged and scored on the test split; else search.decide does that for
    the confirmed pick."""

    trials = trials_from_results(results)
    best = select.best(trials, scfg.max_epochs)
    failed = sum(t["status"] == "FAILED" for t in trials)
    stopped = sum(t["status"] == "FINISHED" and t["epochs"] < scfg.max_epochs for t in trials)
    # Tune returns normally after Ctrl-C: unfinished trials (or fewer than asked) tell it apart.
    interrupted = len(results) < scfg.num_samples or any(t["status"] == "UNFINISHED" for t in trials)
    best_run_id, ckpt = None, None
    if best is not None:
        result = next(t["result"] for t in trials if t["trial_id"] == best["trial_id"])
        # The newest checkpoint: each holds the validation-best weights so far (trainer
        # BEST_FILE), while Tune's score-best record can name a folder that num_to_keep deleted
        # before a driver restart (seen after SIGKILL + --resume on S3).
        from search.run.trainable import model_checkpoint

        ckpt = model_checkpoint(result.checkpoint)
    if tracker is not None and best is not None and test_best:
        best_run_id = tracker.run_id(best["trial_id"])
        if scfg.log_best_model and best_run_id and ckpt is not None:
            with ckpt.as_directory() as d:
                log_run_model(tracker, best_run_id, d)
            tracker.client.set_tag(best_run_id, "best_trial", "true")
    if best is not None and scfg.final_test and ckpt is not None and test_best:
        best["test"] = final_test(ckpt, tracker, best_run_id, scfg, setup)   # a Ray task
    return SearchOutcome(results, best, stopped, failed, wall_s, interrupted,
                         tracker.tracking_uri if tracker else None,
                         tracker.experiment_id if tracker else None,
                         tracker.parent_run_id if tracker else None, best_run_id, trials)


def score_checkpoint(ckpt, data: dict | None = None, overrides: dict | None = None) -> dict:
    """trainer.loop.evaluate_checkpoint of a Tune Checkpoint (read from storage), the data
    opened through the trials' path (data: search.run.remote.data_of); aggregates only.
    `overrides`: config fields (shift_root: the other site the test also scores)."""
    from search.run.remote import datasets
    from trainer.loop import evaluate_checkpoint

    with ckpt.as_directory() as d:
        return evaluate_checkpoint(d, datasets=None if data is None else lambda cfg: datasets(cfg, data),
                                   **(overrides or {}))


def test_overrides(scfg) -> dict:
    """The final test's config overrides: --shift-root, with evaluate_test on (the trials ran
    with it off, and the trainer opens the other site's test split only with it on)."""
    if scfg is None or not getattr(scfg, "shift_root", ""):
        return {}
    return {"shift_root": scfg.shift_root, "evaluate_test": True}


def robustness(ckpt, scfg, setup: dict | None = None) -> dict:
    """robustness_of the deployed checkpoint's scoring, as a Ray task (the decide stage: the
    paired test scores predictions only). Cost: one test pass, M fusion-only passes (the
    features encoded once) and, with --shift-root, one pass over the other site's test split."""
    from search.run.remote import data_of, run

    return robustness_of(run(scfg, "robustness test", score_checkpoint, ckpt, data_of(setup), test_overrides(scfg)))


def log_metrics(tracker, run_ids, metrics: dict[str, float]) -> None:
    for run_id in filter(None, run_ids):
        for k, v in metrics.items():
            tracker.client.log_metric(run_id, k, float(v))


def final_test(ckpt, tracker, best_run_id, scfg=None, setup: dict | None = None) -> dict:
    """The test split, touched once: the chosen trial's validation-best model, with bootstrap,
    scored by a Ray task with a trial's resources (search.run.remote; without `scfg`, here).
    Aggregate metrics only go to MLflow (test/<metric> and test/<metric>_std)."""
    from search.run.remote import data_of, run

    scored = (run(scfg, "final test", score_checkpoint, ckpt, data_of(setup), test_overrides(scfg))
              if scfg is not None else score_checkpoint(ckpt))
    metrics = {f"test/{k}": float(v) for k, v in scored.get("mean", {}).items() if math.isfinite(v)}
    metrics.update({f"test/{k}_std": float(v) for k, v in scored.get("std", {}).items() if math.isfinite(v)})
    point = scored["point"]   # validation-threshold fairness and reliance: point figures
    metrics.update({f"test/{k}": float(point[k]) for k in ("threshold_val", "dpd_at_val_threshold",
                                                          "deodds_at_val_threshold") if k in point})
    metrics.update({f"test/reliance/{m}/{k}": float(v) for m, d in point.get("reliance", {}).items()
                    for k, v in d.items() if math.isfinite(v)})
    metrics.update(robustness_metrics(robustness_of(scored)))   # each modality missing, other site
    if tracker is not None:
        log_metrics(tracker, (best_run_id, tracker.parent_run_id), metrics)
    return metrics
