"""`--warm-start SOURCE`: seed a new search's Optuna sampler with an earlier study's trials.

SOURCE is an earlier study folder (`<storage-path>/<name>`, as the search wrote it) or the name of
an MLflow experiment on this search's tracking store (its latest study run). Every trial of that
study that reported a result enters the new Optuna study as a COMPLETE trial with the values the
earlier sampler was told: its LAST report's validation ES-AUC (and AUC for pareto), the early
value for a trial stopped at a rung (docs/stack.md: that is what OptunaSearch tells Optuna). TPE
then starts from that model instead of its random start-up trials; nothing is re-trained.

Refused in one line: another search space (the earlier study tuned another `--mode`'s
hyperparameters, or a value lies outside today's ranges) or another objective (a single-
objective study cannot seed a Pareto search's two values, and the reverse). Another attribute,
another site or other epochs are allowed: that is the point (a lab searching again for race
after gender, or at a second hospital). The earlier values are only a prior for the sampler; the
new study's own trials decide what is deployed.

Cost at the real size: reading 100 trials' result.json files (or 100 MLflow runs): seconds.
"""
from __future__ import annotations

import math
from pathlib import Path

import optuna

from search.record.space import RANGES, hyperparameters, optuna_distributions
from search.record.study import read_study, read_trials
from search.record.tracking import default_tracking_uri

MULTI = ("pareto",)          # objectives whose Optuna study has two values (auc, es_auc)


def _objective_kind(objective: str) -> str:
    return "two values (auc, es_auc)" if objective in MULTI else "one value (es_auc)"


def load(scfg) -> list[dict]:
    """[{"params", "auc", "es_auc"}] of the earlier study, checked against this search."""
    source = scfg.warm_start
    if source.startswith(("s3://", "gs://")) or Path(source).expanduser().is_dir():
        mode, objective, trials = _from_study(source)
    else:
        mode, objective, trials = _from_mlflow(scfg, source)
    names = hyperparameters(scfg.mode)
    if tuple(hyperparameters(mode)) != tuple(names):
        raise ValueError(f"--warm-start {source}: that study searched --mode {mode} "
                         f"({', '.join(hyperparameters(mode))}), this one --mode {scfg.mode} "
                         f"({', '.join(names)}): a warm start needs the same search space")
    if _objective_kind(objective) != _objective_kind(scfg.objective):
        raise ValueError(f"--warm-start {source}: that study's --objective {objective} gives Optuna "
                         f"{_objective_kind(objective)}, this --objective {scfg.objective} "
                         f"{_objective_kind(scfg.objective)}: warm-start from a study of the same kind")
    out = []
    for t in trials:
        params = {k: RANGES[k].cast(t["params"][k]) for k in names if k in t["params"]}
        if len(params) != len(names) or not all(math.isfinite(t[k]) for k in ("auc", "es_auc")):
            continue     # a trial that never reported (or a failed one)
        outside = [k for k, v in params.items() if not RANGES[k].low <= v <= RANGES[k].high]
        if outside:
            raise ValueError(f"--warm-start {source}: {outside[0]}={params[outside[0]]} lies outside "
                             f"today's range [{RANGES[outside[0]].low}, {RANGES[outside[0]].high}]: "
                             "the search space changed since that study")
        out.append({"params": params, "auc": t["auc"], "es_auc": t["es_auc"]})
    if not out:
        raise ValueError(f"--warm-start {source}: that study has no trial with a result to start from")
    return out


def _from_study(study_dir: str):
    if study_dir.startswith(("s3://", "gs://")):
        raise ValueError(f"--warm-start {study_dir}: give a local study folder or an MLflow "
                         "experiment name (object storage is read by the search, not yet here)")
    study_dir = str(Path(study_dir).expanduser().resolve())
    try:
        search = read_study(study_dir)["search"]
    except FileNotFoundError:
        raise ValueError(f"--warm-start {study_dir}: no study.json there (not a study folder)") from None
    trials = []
    for t in read_trials(study_dir):
        last = next((r for r in reversed(t["results"]) if "es_auc" in r and "auc" in r), None)
        if last is not None and t["tune_status"] != "ERROR":
            trials.append({"params": t["config"], "auc": _num(last["auc"]), "es_auc": _num(last["es_auc"])})
    return search.get("mode", "full"), search.get("objective", "es_auc"), trials


def _from_mlflow(scfg, experiment: str):
    # mlflow (about 1.5 s) only for an experiment: the search imports this module before it
    # opens MLflow in a thread while Ray starts (runner.prepare_study)
    from mlflow import MlflowClient

    uri = scfg.tracking_uri or default_tracking_uri(scfg.results_dir)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--warm-start {experiment}: neither a study folder nor an MLflow "
                         f"experiment at {uri}")
    parents = client.search_runs([exp.experiment_id], "tags.run_kind = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ValueError(f"--warm-start {experiment}: the experiment has no study run")
    parent = parents[0]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                                  "tags.run_kind = 'trial'", max_results=5000)
    trials = [{"params": run.data.params, "auc": _num(run.data.metrics.get("auc")),
               "es_auc": _num(run.data.metrics.get("es_auc"))}
              for run in children if run.info.status != "FAILED"]
    return parent.data.tags.get("mode", "full"), parent.data.tags.get("objective", "es_auc"), trials


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def optuna_trials(warm: list[dict], mode: str, objective: str, auc_floor: float | None = None) -> list:
    """The earlier trials as Optuna FrozenTrials for `study.add_trials` (with the constrained
    objective's constraint, computed against THIS search's floor)."""
    dists = optuna_distributions(hyperparameters(mode))
    out = []
    for t in warm:
        values = [t["auc"], t["es_auc"]] if objective in MULTI else [t["es_auc"]]
        # the same named constraint ConstrainedOptunaSearch sets (feasible when <= 0)
        constraints = {"auc_floor": auc_floor - t["auc"]} if auc_floor is not None else None
        out.append(optuna.trial.create_trial(params=t["params"], distributions=dists, values=values,
                                             constraints=constraints, user_attrs={"warm_start": True, "auc": t["auc"]}))
    return out
