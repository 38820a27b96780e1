"""Confirmation stage: re-train the finalists with fresh seeds, as one more Tune run, and choose.

Candidates: the top `--finalists` K configurations of the search (search.objectives.finalists),
the paper's point (same mode) and plain fusion (`--mode baseline`), each with `--confirm-seeds`
S seeds (seed+1 ... seed+S: none of them the seed the search picked on). Every run trains all
epochs (no early stopping); its value is its best-epoch validation score, as in the search.

The rule (docs/search.md): among the MultiFair candidates whose mean validation AUC is at least
plain fusion's mean minus `--min-auc-drop` (no floor when the flag is not given), the one with the
highest MEAN validation ES-AUC over seeds is the best candidate; it is deployed only if that mean
is above plain fusion's. Otherwise (or when no candidate clears the floor) the decision says so
and plain fusion is deployed: a tool that searched MultiFair must still be able to answer "plain
fusion is better here". The best candidate's seed-paired difference to plain fusion (one
difference per seed) is reported with a t interval (scipy.stats.ttest_rel), so "beats plain fusion
on validation" is a stated interval, not a max.
"""
from __future__ import annotations

import math
import os

import numpy as np

from search.study import full_length, trial_record

BASELINE = "baseline"
PAPER = "paper"
CONFIRM = "confirm"   # the stage: Tune folder <study>-confirm, run_kind tag, run names


def candidates(scfg, finals: list[dict]) -> dict[str, dict]:
    """label -> hyperparameters + mode (+ the search trial it came from)."""
    out = {}
    for t in finals:
        out[f"{scfg.mode}-{t['trial_id']}"] = {**t["params"], "mode": scfg.mode, "trial_id": t["trial_id"]}
    if not any(all(math.isclose(c[k], v) for k, v in scfg.baseline.items()) for c in out.values()):
        out[PAPER] = {**scfg.baseline, "mode": scfg.mode}
    out[BASELINE] = {**scfg.baseline, "mode": "baseline"}   # the five values are unused there
    return out


def seeds(scfg) -> list[int]:
    return [scfg.seed + 1 + i for i in range(scfg.confirm_seeds)]


def run_confirmation(scfg, setup: dict, finals: list[dict], tracker) -> dict:
    """The Tune run over candidates x seeds; returns {"candidates", "runs", "stats", "choice"}."""
    cands = candidates(scfg, finals)
    runs = grid_run(scfg, setup, cands, seeds(scfg), CONFIRM, tracker)
    done = full_length(runs, scfg.max_epochs)
    stats = candidate_stats(done)
    return {"candidates": cands, "runs": runs, "stats": stats, "seeds": seeds(scfg),
            "choice": choose(stats, done, scfg.min_auc_drop)}


def grid_run(scfg, setup: dict, cands: dict, seed_list: list[int], stage: str, tracker) -> list[dict]:
    """One Tune run `<name>-<stage>` over candidates x seeds, every run all epochs, resumable;
    returns search.study.trial_record dicts with candidate, seed, checkpoint and run id."""
    from ray import tune

    from search.progress import ProgressCallback
    from search.study import METRIC
    from search.tracking import MLflowTrialCallback
    from search.trainable import checkpoint_policy, model_checkpoint, train_trial, trial_dirname

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")   # runner.py
    every = (setup.get("checkpoints") or {}).get("every", scfg.checkpoint_every)
    setup = {**setup, "candidates": cands, "checkpoints": checkpoint_policy(every)}   # no rungs here
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup),
                                    {"cpu": scfg.cpus_per_trial, "gpu": scfg.gpus_per_trial})
    name = f"{scfg.name}-{stage}"
    path = f"{scfg.storage_path.rstrip('/')}/{name}"
    from search.storage import ResumeStatePruner

    callbacks = [ProgressCallback(scfg.max_epochs, label=stage), ResumeStatePruner()]
    if tracker is not None:
        tags = {"run_kind": stage, "stage": stage, "dataset": scfg.dataset, "attribute": scfg.attribute}
        callbacks.append(MLflowTrialCallback(tracker, scfg.max_epochs, tags, setup["base"], cands, stage,
                                             unlogged_dir=str(scfg.results_dir)))
    n = len(cands) * len(seed_list)
    print(f"[{stage}] {len(cands)} candidates x {len(seed_list)} seeds = {n} runs of "
          f"{scfg.max_epochs} epochs: {', '.join(cands)}", flush=True)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"candidate": tune.grid_search(list(cands)),
                                    "seed": tune.grid_search(seed_list)},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max",   # no searcher: a plain grid
                                        max_concurrent_trials=min(n, _concurrency(scfg)),
                                        trial_dirname_creator=trial_dirname, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=scfg.storage_path, callbacks=callbacks, verbose=min(scfg.verbose, 1),
                failure_config=tune.FailureConfig(max_failures=scfg.max_failures),
                # the newest two (as the search): the last epoch's holds the best model
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    runs = []
    for r in tuner.fit():
        df = r.metrics_dataframe
        rows = df.to_dict("records") if df is not None and len(df) else []
        trial_id = r.path.rstrip("/").rsplit("/", 1)[-1].removeprefix("trial_")
        runs.append(trial_record(trial_id, r.config, rows, "FAILED" if r.error else "FINISHED",
                                 candidate=r.config["candidate"], seed=int(r.config["seed"]),
                                 checkpoint=model_checkpoint(r.checkpoint),   # holds the best weights
                                 run_id=tracker._children.get(trial_id) if tracker else None))
    return runs


def _concurrency(scfg) -> int:
    import ray

    if scfg.max_concurrent > 0:
        return scfg.max_concurrent
    res = ray.cluster_resources()
    return max(1, int(res.get("CPU", 1) // max(scfg.cpus_per_trial, 1e-9)))


def candidate_stats(runs: list[dict]) -> dict[str, dict]:
    """Per candidate: mean and std (ddof=1) over seeds of validation AUC and ES-AUC."""
    out = {}
    for label in dict.fromkeys(r["candidate"] for r in runs):
        mine = [r for r in runs if r["candidate"] == label]
        row = {"n_seeds": len(mine)}
        for key in ("auc", "es_auc"):
            v = np.array([r["val"][key] for r in mine])
            row[key], row[f"{key}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[label] = row
    return out


def choose(stats: dict, runs: list[dict], min_auc_drop: float | None) -> dict:
    """The stated rule (module docstring). Returns the label, the floor and the seed-paired
    validation difference to plain fusion."""
    if BASELINE not in stats:
        raise RuntimeError("confirmation: every plain-fusion (baseline) run failed; nothing to compare with")
    floor = stats[BASELINE]["auc"] - min_auc_drop if min_auc_drop is not None else -math.inf
    eligible = {k: s for k, s in stats.items() if k != BASELINE and s["auc"] >= floor}
    best = max(eligible, key=lambda k: eligible[k]["es_auc"]) if eligible else None
    beats = best is not None and eligible[best]["es_auc"] > stats[BASELINE]["es_auc"]
    label = best if beats else BASELINE
    rule = ("highest mean validation ES-AUC over seeds" +
            (f" among candidates with mean validation AUC >= plain fusion's - {min_auc_drop}"
             if min_auc_drop is not None else "") +
            ", deployed only if above plain fusion's mean")
    return {"label": label, "rule": rule, "auc_floor": None if math.isinf(floor) else floor,
            "fell_back_to_baseline": label == BASELINE, "best_candidate": best,
            "vs_baseline_val": seed_paired(runs, best) if best is not None else {}}


def seed_paired(runs: list[dict], label: str) -> dict:
    """Validation difference (chosen - plain fusion) paired by seed, with a 95% t interval."""
    from scipy.stats import ttest_rel

    by_seed = {(r["candidate"], r["seed"]): r["val"] for r in runs}
    common = sorted(s for c, s in by_seed if c == label and (BASELINE, s) in by_seed)
    out = {"n_seeds": len(common)}
    for key in ("auc", "es_auc"):
        a = np.array([by_seed[(BASELINE, s)][key] for s in common])
        b = np.array([by_seed[(label, s)][key] for s in common])
        out[key] = float((b - a).mean()) if len(common) else math.nan
        lo = hi = math.nan
        if len(common) >= 2 and np.ptp(b - a) > 0:
            ci = ttest_rel(b, a).confidence_interval(0.95)
            lo, hi = float(ci.low), float(ci.high)
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
    return out


def seed_run(confirmation: dict, label: str) -> dict | None:
    """The run deployed for a candidate: its FIRST seed (fixed before any result is seen, so the
    test is not a second winner's pick among seeds)."""
    first = confirmation["seeds"][0]
    mine = [r for r in confirmation["runs"] if r["candidate"] == label and r["checkpoint"] is not None]
    return next((r for r in mine if r["seed"] == first), mine[0] if mine else None)
