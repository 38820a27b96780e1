"""The one scoring path of a study's models on the test split (the test touched once per model),
each as one Ray task with a trial's resources (search.run.remote):
- final_test: the search's best trial when there is no confirmation stage (bootstrap figures,
  robustness block);
- deployed_test: after the confirmation, the deployed model's ONE test pass gives both its column
  of the paired test against the reference (search.decide.paired: the statistics) and its
  robustness block (each modality missing: fusion passes over the same encoded features; the
  other site: its own pass); the other model of the comparison is predicted once (predict_test);
- the registered model's batch scoring: search.decide.registry.score.
Aggregates only go to MLflow; per-sample predictions stay inside the task."""
from __future__ import annotations

import math

import numpy as np

from search.decide import select
from search.decide.mlmodel import log_run_model
from search.decide.paired import paired_bootstrap
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


def score_checkpoint(ckpt, data: dict | None = None, overrides: dict | None = None,
                     keep_predictions: bool = False) -> dict:
    """trainer.loop.evaluate_checkpoint of a Tune Checkpoint (read from storage), the data
    opened through the trials' path (data: search.run.remote.data_of); aggregates only, unless
    `keep_predictions` (the test pass itself, for a caller in the same task).
    `overrides`: config fields (shift_root: the other site the test also scores)."""
    from search.run.remote import datasets
    from trainer.loop import evaluate_checkpoint

    with ckpt.as_directory() as d:
        return evaluate_checkpoint(d, datasets=None if data is None else lambda cfg: datasets(cfg, data),
                                   keep_predictions=keep_predictions, **(overrides or {}))


def test_overrides(scfg) -> dict:
    """The final test's config overrides: --shift-root, with evaluate_test on (the trials ran
    with it off, and the trainer opens the other site's test split only with it on)."""
    if scfg is None or not getattr(scfg, "shift_root", ""):
        return {}
    return {"shift_root": scfg.shift_root, "evaluate_test": True}


def predict_test(checkpoint_dir: str, data_root: str | None = None, data: dict | None = None):
    """(labels, probabilities, group codes, group names) of a checkpoint's validation-chosen
    weights on the test split: one pass, nothing else scored (data_root: score another copy of
    the data; data: the search's data source, search.run.remote.data_of, opened through the
    trials' path on this node)."""
    from trainer.config import config_from_dict
    from trainer.checkpoint import checkpoint_weights
    from trainer.loop import Trainer

    state = checkpoint_weights(checkpoint_dir)
    overrides = {"pretrained": False, **({"data_root": data_root} if data_root else {})}
    cfg = config_from_dict({**state["config"], **overrides})
    if data is not None:
        from search.run.remote import datasets

        trainer = Trainer(cfg, datasets=datasets(cfg, data))
    else:
        trainer = Trainer(cfg)
    trainer.model.load_state_dict(state["model"])
    y, p, g = trainer.predict("test")
    return y, p, g, trainer.group_names


def deployed_test(base_ckpt, cand_ckpt, deployed: str, n: int = 1000, seed: int = 0,
                  data: dict | None = None, overrides: dict | None = None) -> dict:
    """The test split once per model: {"paired": the paired bootstrap of the candidate against
    the reference (search.decide.paired; None without a candidate), "robustness": the deployed
    model's block (search.record.summary.robustness_of)}. `deployed` names the deployed model's
    column, "baseline" (the reference, base_ckpt) or "chosen" (cand_ckpt). The deployed model is
    scored once (trainer.loop.evaluate_checkpoint, its predictions kept: no bootstrap, which the
    block does not use) and its predictions are its column of the paired test; the other model
    is predicted once. Per-sample predictions stay in this process (a Ray task: run_deployed_test)."""
    if deployed not in ("baseline", "chosen") or (deployed == "chosen" and cand_ckpt is None):
        raise ValueError(f"deployed={deployed!r}: give 'baseline' or 'chosen' (with a candidate checkpoint)")
    mine, other = (base_ckpt, cand_ckpt) if deployed == "baseline" else (cand_ckpt, base_ckpt)
    scored = score_checkpoint(mine, data, {**(overrides or {}), "bootstrap": 0}, keep_predictions=True)
    pred = scored.pop("predictions")
    out = {"paired": None, "robustness": robustness_of(scored)}
    if other is None:
        return out
    with other.as_directory() as d:
        y, p, g, _ = predict_test(d, data=data)
    if not (np.array_equal(y, pred["label"]) and np.array_equal(g, pred["group"])):
        raise RuntimeError("paired test: the two models did not see the same test split (labels or "
                           "groups differ); both must be scored on the study's data")
    p_base, p_cand = (pred["probability"], p) if deployed == "baseline" else (p, pred["probability"])
    out["paired"] = paired_bootstrap(y, p_base, p_cand, g, n=n, seed=seed, group_names=pred["group_names"])
    return out


def run_deployed_test(base_ckpt, cand_ckpt, deployed: str, n: int = 1000, seed: int = 0, scfg=None,
                      setup: dict | None = None) -> dict:
    """deployed_test as ONE Ray task with a trial's resources (search.run.remote), the data read
    on the task's node (--shift-root: the other site too): aggregates only come back. Without
    `scfg` (no search), in this process."""
    if scfg is None:
        return deployed_test(base_ckpt, cand_ckpt, deployed, n, seed)
    from search.run.remote import data_of, run

    return run(scfg, "deployed test", deployed_test, base_ckpt, cand_ckpt, deployed, n, seed,
               data_of(setup), test_overrides(scfg))


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
