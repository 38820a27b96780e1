"""Sensitivity of validation ES-AUC to the five hyperparameters, and the deployment pick.

    python -m search.analysis --tracking-uri sqlite:////abs/multifair-results/mlflow.db \\
        --experiment multifair-fairvision-gender [--policy full|common] [--register NAME]

The study is rebuilt as an Optuna study (optuna.trial.create_trial) from the MLflow child runs
(or from a Tune results folder with --results). Ray's OptunaSearch tells Optuna that an
ASHA-stopped trial is COMPLETE with its early value, which would compare epoch-1 scores with
epoch-10 scores; here a trial's value is either its best validation ES-AUC among trials that
trained every epoch (--policy full, default) or its ES-AUC at one common epoch that every kept
trial reached (--policy common, default epoch: the ASHA grace period). Importances: fANOVA and
PED-ANOVA (optuna.importance). Deployment: the best validation ES-AUC among full-length trials;
its logged model is registered with alias `champion` (models:/NAME@champion).
"""
from __future__ import annotations

import argparse
import math
import sys

from search.space import RANGES, optuna_distributions
from search.study import best_epoch
from trainer.jsonout import dumps

METRIC = "es_auc"


def trials_from_mlflow(tracking_uri: str, experiment: str, parent_run_id: str | None = None):
    """Trial records of the latest (or given) study run of an experiment, and its max epochs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {tracking_uri}")
    if parent_run_id is None:
        parents = client.search_runs([exp.experiment_id], "tags.run_kind = 'study'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            raise SystemExit(f"experiment {experiment!r} has no study run")
        parent_run_id = parents[0].info.run_id
    parent = client.get_run(parent_run_id)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=5000)
    trials = []
    for run in children:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, METRIC)}
        trials.append({"trial_id": run.data.tags.get("trial_id"), "run_id": run.info.run_id,
                       "params": {k: float(v) for k, v in run.data.params.items() if k in RANGES},
                       "history": history, "status": run.info.status,
                       "model_logged": run.data.tags.get("model_logged") == "true"})
    return trials, int(parent.data.params["max_epochs"]), int(parent.data.params["grace_period"])


def trials_from_results(study_dir: str):
    """The same records from a Tune results folder (no MLflow needed)."""
    from search.study import STATUS, read_study, read_trials

    search = read_study(study_dir)["search"]
    trials = [{"trial_id": t["trial_id"], "run_id": None, "model_logged": False,
               "params": {k: float(v) for k, v in t["config"].items() if k in RANGES},
               "history": {int(r["epoch"]): r[METRIC] for r in t["results"] if METRIC in r},
               "status": STATUS.get(t["tune_status"], "KILLED")} for t in read_trials(study_dir)]
    return trials, int(search["max_epochs"]), int(search["grace_period"])


def trial_values(trials, max_epochs: int, policy: str = "full", epoch: int | None = None):
    """[(trial, value)] comparable across trials (see the module docstring)."""
    out = []
    for t in trials:
        if t["status"] == "FAILED" or not t["history"]:
            continue
        if policy == "full":
            best = best_epoch(t["history"])
            if max(t["history"]) >= max_epochs and best is not None:
                out.append((t, best[1]))
        elif epoch in t["history"] and math.isfinite(t["history"][epoch]):
            out.append((t, t["history"][epoch]))
    return out


def rebuild_study(values):
    import optuna

    study = optuna.create_study(direction="maximize", study_name="rebuilt")
    dists = optuna_distributions(values[0][0]["params"] if values else ())
    for t, value in values:
        study.add_trial(optuna.trial.create_trial(params=t["params"], distributions=dists, value=value,
                                                  user_attrs={"trial_id": t["trial_id"]}))
    return study


def importances(study) -> dict[str, dict[str, float] | str]:
    """fANOVA and PED-ANOVA importances; a method that cannot run on this study says why."""
    from optuna.importance import (FanovaImportanceEvaluator, PedAnovaImportanceEvaluator,
                                   get_param_importances)

    out = {}
    for name, evaluator in (("fanova", FanovaImportanceEvaluator(seed=0)),
                            ("ped_anova", PedAnovaImportanceEvaluator())):
        try:
            out[name] = dict(get_param_importances(study, evaluator=evaluator))
        except (ValueError, RuntimeError) as exc:   # e.g. too few trials for the quantile split
            out[name] = f"not computable: {exc}"
    return out


def pick_deployment(trials, max_epochs: int):
    """Best validation ES-AUC among trials that trained every epoch."""
    values = trial_values(trials, max_epochs, "full")
    return max(values, key=lambda tv: tv[1]) if values else None


def register_champion(tracking_uri: str, run_id: str, name: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(f"runs:/{run_id}/model", name)
    mlflow.MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", version.version)
    return f"models:/{name}@champion"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="MultiFair search: sensitivity analysis and deployment pick")
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--experiment", default="")
    p.add_argument("--parent-run-id", default=None, help="default: the latest study run")
    p.add_argument("--results", default="", help="read a Tune study folder instead of MLflow")
    p.add_argument("--policy", choices=["full", "common"], default="full")
    p.add_argument("--epoch", type=int, default=None, help="with --policy common (default: grace period)")
    p.add_argument("--register", default="", help="registered model name for the champion")
    p.add_argument("--json", default="", help="also write the analysis here")
    a = p.parse_args(argv)
    if a.results:
        trials, max_epochs, grace = trials_from_results(a.results)
    elif a.tracking_uri and a.experiment:
        trials, max_epochs, grace = trials_from_mlflow(a.tracking_uri, a.experiment, a.parent_run_id)
    else:
        p.error("give --tracking-uri and --experiment, or --results")
    epoch = a.epoch or grace
    values = trial_values(trials, max_epochs, a.policy, epoch)
    what = f"trials that trained all {max_epochs} epochs" if a.policy == "full" else f"ES-AUC at epoch {epoch}"
    print(f"{len(trials)} trials, {len(values)} used ({what})")
    report = {"policy": a.policy, "epoch": epoch if a.policy == "common" else max_epochs,
              "n_trials": len(trials), "n_used": len(values)}
    if len(values) >= 2:
        report["importance"] = importances(rebuild_study(values))
        for method, imp in report["importance"].items():
            line = imp if isinstance(imp, str) else "  ".join(f"{k} {v:.3f}" for k, v in imp.items())
            print(f"importance ({method}): {line}")
    else:
        print("importance: needs at least 2 comparable trials")
    pick = pick_deployment(trials, max_epochs)
    if pick is None:
        print("deployment: no trial trained all epochs")
        return 1
    t, value = pick
    report["deployment"] = {"trial_id": t["trial_id"], "run_id": t["run_id"], "val_es_auc": value,
                            "params": t["params"]}
    print(f"deployment: trial {t['trial_id']} (run {t['run_id']}) val es_auc {value:.4f}  " +
          "  ".join(f"{k}={v:.4g}" for k, v in t["params"].items()))
    if a.register:
        if not t["model_logged"]:
            print(f"error: run {t['run_id']} has no logged model (the search logs the best trial's)",
                  file=sys.stderr)
            return 1
        report["registered"] = register_champion(a.tracking_uri, t["run_id"], a.register)
        print(f"registered {report['registered']}")
    if a.json:
        with open(a.json, "w") as f:
            f.write(dumps(report, indent=1, default=str))   # strict JSON: NaN -> null
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
