"""What a finished (or interrupted) search produced: per-trial records from Tune's ResultGrid,
the chosen trial (best validation ES-AUC among trials that trained every epoch), its model
logged to MLflow, and the summary printed at the end."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from search.space import RANGES


@dataclass
class SearchOutcome:
    results: object                  # ray.tune.ResultGrid
    best: dict | None                # {"trial_id", "config", "val", "epoch", "full"}
    stopped_early: int
    failed: int
    wall_s: float
    interrupted: bool
    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    best_run_id: str | None


def select_best(trials: list[dict], max_epochs: int) -> dict | None:
    """Best validation ES-AUC (best epoch) among trials that trained all epochs; when none did,
    among all trials (flagged full=False). The rule is search.analysis's deployment pick.
    `trials`: dicts with trial_id, config, history (per-epoch result rows), status."""
    from search.analysis import best_epoch, pick_deployment
    from search.trainable import METRIC

    records = [{**t, "rows": t["history"],
                "history": {int(r.get("epoch", 0)): r[METRIC] for r in t["history"]
                            if isinstance(r.get(METRIC), (int, float))}} for t in trials]
    for full in (True, False):
        pick = pick_deployment(records, max_epochs if full else 0)
        if pick is None:
            continue
        t = pick[0]
        epoch, _ = best_epoch(t["history"])
        row = next(r for r in t["rows"] if int(r.get("epoch", 0)) == epoch)
        return {"trial_id": t["trial_id"], "config": {k: v for k, v in t["config"].items() if k in RANGES},
                "val": {k: v for k, v in row.items() if k.startswith("val/")} | {METRIC: row[METRIC]},
                "epoch": epoch, "full": full, "path": t.get("path")}
    return None


def trials_from_results(results) -> list[dict]:
    """Per trial: id, config, per-epoch history, epochs, status (FINISHED / FAILED / UNFINISHED)."""
    tune_status = {t.trial_id: t.status for t in getattr(results._experiment_analysis, "trials", [])}
    out = []
    for r in results:
        trial_id = Path(r.path).name.removeprefix("trial_")
        df = r.metrics_dataframe   # None for a trial that never reported
        history = df.to_dict("records") if df is not None and len(df) else []
        status = tune_status.get(trial_id, "ERROR" if r.error else "TERMINATED")
        out.append({"trial_id": trial_id, "config": r.config, "history": history, "path": r.path,
                    "epochs": max((int(h.get("epoch", 0)) for h in history), default=0),
                    "status": {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(status, "UNFINISHED"),
                    "result": r})
    return out


def summarize_results(scfg, results, tracker, wall_s) -> SearchOutcome:
    from search.trainable import METRIC, MODE

    trials = trials_from_results(results)
    best = select_best(trials, scfg.max_epochs)
    failed = sum(t["status"] == "FAILED" for t in trials)
    stopped = sum(t["status"] == "FINISHED" and t["epochs"] < scfg.max_epochs for t in trials)
    # Tune returns normally after Ctrl-C: unfinished trials (or fewer than asked) tell it apart.
    interrupted = len(results) < scfg.num_samples or any(t["status"] == "UNFINISHED" for t in trials)
    best_run_id, ckpt = None, None
    if best is not None:
        result = next(t["result"] for t in trials if t["trial_id"] == best["trial_id"])
        ckpt = result.get_best_checkpoint(METRIC, MODE) or result.checkpoint
    if tracker is not None and best is not None:
        best_run_id = tracker._children.get(best["trial_id"]) or _lookup_child(tracker, best["trial_id"])
        if scfg.log_best_model and best_run_id and ckpt is not None:
            with ckpt.as_directory() as d:
                tracker.log_model(best_run_id, d)
            tracker.client.set_tag(best_run_id, "best_trial", "true")
    if best is not None and scfg.final_test and ckpt is not None:
        best["test"] = final_test(ckpt, tracker, best_run_id)
    return SearchOutcome(results, best, stopped, failed, wall_s, interrupted,
                         tracker.tracking_uri if tracker else None,
                         tracker.experiment_id if tracker else None,
                         tracker.parent_run_id if tracker else None, best_run_id)


def final_test(ckpt, tracker, best_run_id) -> dict:
    """The test split, touched once: the chosen trial's validation-best model, with bootstrap.
    Aggregate metrics only go to MLflow (test/<metric> and test/<metric>_std)."""
    from trainer.loop import evaluate_checkpoint

    with ckpt.as_directory() as d:
        scored = evaluate_checkpoint(d)
    metrics = {f"test/{k}": float(v) for k, v in scored.get("mean", {}).items() if math.isfinite(v)}
    metrics.update({f"test/{k}_std": float(v) for k, v in scored.get("std", {}).items() if math.isfinite(v)})
    point = scored["point"]   # validation-threshold fairness and reliance: point figures
    metrics.update({f"test/{k}": float(point[k]) for k in ("threshold_val", "dpd_at_val_threshold",
                                                          "deodds_at_val_threshold") if k in point})
    metrics.update({f"test/reliance/{m}/{k}": float(v) for m, d in point.get("reliance", {}).items()
                    for k, v in d.items() if math.isfinite(v)})
    if tracker is not None:
        for run_id in filter(None, (best_run_id, tracker.parent_run_id)):
            for k, v in metrics.items():
                tracker.client.log_metric(run_id, k, v)
    return metrics


def _lookup_child(tracker, trial_id):
    found = tracker._search(f"tags.study_dir = '{tracker.study_dir}' and tags.trial_id = '{trial_id}'")
    return found[0].info.run_id if found else None


def print_summary(scfg: SearchConfig, o: SearchOutcome) -> None:
    from search.tracking import ui_hint

    if o.interrupted:
        print(f"\n=== MultiFair search INTERRUPTED: continue it with the same command plus --resume "
              f"(study {scfg.study_dir}) ===")
    elif o.failed and o.failed == len(o.results):
        print(f"\n=== MultiFair search finished, but ALL {o.failed} trials FAILED: see the error "
              f"files listed above (Tune's trial table) ===")
    else:
        print("\n=== MultiFair search finished ===")
    print(f"study: {scfg.study_dir}   wall time {o.wall_s:.0f} s")
    print(f"trials: {len(o.results)}  stopped early by ASHA: {o.stopped_early}  failed: {o.failed}")
    if o.best is None:
        print("no trial produced a validation metric")
    else:
        scope = "among trials that trained all epochs" if o.best["full"] else "(no trial trained all epochs)"
        print(f"best configuration {scope}: trial {o.best['trial_id']}, epoch {o.best['epoch']}")
        for k, v in o.best["config"].items():
            print(f"  {k:10s} {v:.6g}")
        print("validation metrics:")
        for k, v in sorted(o.best["val"].items()):
            print(f"  {k:24s} {v:.4f}")
        if o.best.get("test"):
            t = o.best["test"]
            print("test split (scored once, bootstrap mean ± std): " + ", ".join(
                f"{k} {t[f'test/{k}']:.4f} ± {t.get(f'test/{k}_std', float('nan')):.4f}"
                for k in ("auc", "es_auc", "dpd", "deodds") if f"test/{k}" in t))
    if o.tracking_uri:
        command, url = ui_hint(o.tracking_uri, o.experiment_id)
        print(f"MLflow: experiment id {o.experiment_id}, parent run id {o.parent_run_id}, "
              f"best trial run id {o.best_run_id}")
        print(f"open the UI:  {command}\n  runs table: {url}")
    else:
        print(f"MLflow was skipped: python -m search.relog --results {scfg.study_dir} --tracking-uri URI")
