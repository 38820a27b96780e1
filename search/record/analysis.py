"""Sensitivity of validation ES-AUC to the searched hyperparameters, and what was deployed: a
report (it picks and registers nothing; `python -m search register` does, search/decide/champion.py).

    python -m search analyze --tracking-uri sqlite:////abs/multifair-results/mlflow.db \\
        --experiment multifair-fairvision-gender [--policy full|common]

The study is rebuilt as an Optuna study (optuna.trial.create_trial) from the search's own trials
only (MLflow child runs with run_kind "trial", or the study's own Tune folder with --results),
never the confirmation's re-runs (run_kind "confirm": repeated settings, and the reference, which
has none of the searched hyperparameters), over the study's mode's hyperparameters. Ray's OptunaSearch tells Optuna that an
ASHA-stopped trial is COMPLETE with its early value, which would compare epoch-1 scores with
epoch-10 scores; here a trial's value is either its best validation ES-AUC among trials that
trained every epoch (--policy full, default) or its ES-AUC at one common epoch that every kept
trial reached (--policy common, default epoch: the ASHA grace period). Importances: fANOVA and
PED-ANOVA (optuna.importance). Deployment: what the study's decision deployed (decision.json in
the study folder, found through the study run's `study_dir` tag, or its `chosen` tag); a study
without a decision (no confirmation stage) deployed nothing, and the report says so.
"""
from __future__ import annotations

import argparse
import math

from search.record.reference import FUSION, saved_reference
from search.record.space import hyperparameters, optuna_distributions
from search.record.study import DECISION_FILE, METRIC, STATUS, best_epoch, read_json, read_study, read_trials
from trainer.jsonout import dumps

SEARCH_KIND = "trial"   # run_kind of the search's own child runs (search.record.tracking)


def trials_from_mlflow(tracking_uri: str, experiment: str, parent_run_id: str | None = None):
    """The search's own trial records of the latest (or given) study run of an experiment, its
    max epochs and grace period, and the study: {"mode", "study_dir", "chosen"} (its tags)."""
    # mlflow (about 1.5 s) only when reading an experiment: the search imports this module (its
    # figures) and opens MLflow in a thread while Ray starts (runner.prepare_study)
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
    mode = parent.data.params.get("mode", "full")
    names = hyperparameters(mode)
    trials = []
    for run in children:
        if run.data.tags.get("run_kind", SEARCH_KIND) != SEARCH_KIND:   # confirmation re-runs
            continue
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, METRIC)}
        trials.append({"trial_id": run.data.tags.get("trial_id"), "run_id": run.info.run_id,
                       "params": {k: float(v) for k, v in run.data.params.items() if k in names},
                       "history": history, "status": run.info.status,
                       "model_logged": run.data.tags.get("model_logged") == "true"})
    found = {"mode": mode, "study_dir": parent.data.tags.get("study_dir"),
             "chosen": parent.data.tags.get("chosen", "")}
    return trials, int(parent.data.params["max_epochs"]), int(parent.data.params["grace_period"]), found


def trials_from_results(study_dir: str):
    """The same records from a study's own Tune folder (the confirmation has its own folder,
    `<study>-confirm`; no MLflow needed)."""
    search = read_study(study_dir)["search"]
    names = hyperparameters(search.get("mode", "full"))
    trials = [{"trial_id": t["trial_id"], "run_id": None, "model_logged": False,
               "params": {k: float(v) for k, v in t["config"].items() if k in names},
               "history": {int(r["epoch"]): r[METRIC] for r in t["results"] if METRIC in r},
               "status": STATUS.get(t["tune_status"], "KILLED")} for t in read_trials(study_dir)]
    found = {"mode": search.get("mode", "full"), "study_dir": study_dir, "chosen": ""}
    return trials, int(search["max_epochs"]), int(search["grace_period"]), found


def read_decision(study_dir: str | None) -> dict | None:
    """The study's decision.json, or None when it has none (no confirmation stage, a study
    still running, or a study folder this machine cannot read)."""
    if not study_dir:
        return None
    try:
        return read_json(study_dir, DECISION_FILE)
    except (OSError, ValueError):   # pyarrow: FileNotFoundError / OSError; a bad URI: ArrowInvalid
        return None


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


def rebuild_study(points, mode: str = "full"):
    """The one Optuna study rebuild (here and search.record.figures): over the mode's own searched
    hyperparameters (search.record.space.hyperparameters; --mode ogm_ge: ogm_alpha only), every
    objective maximised. `points`: [(trial, value)] or [(trial, (value, value, ...))]."""
    # optuna loads to rebuild a study, not on import: `python -m search register` and the
    # stages that read a study through this module never need it
    import optuna

    points = [(t, tuple(v) if isinstance(v, (tuple, list)) else (v,)) for t, v in points]
    n_objectives = len(points[0][1]) if points else 1
    study = optuna.create_study(directions=["maximize"] * n_objectives, study_name="rebuilt")
    names = hyperparameters(mode)
    dists = optuna_distributions(names)
    for t, values in points:
        study.add_trial(optuna.trial.create_trial(params={k: t["params"][k] for k in names},
                                                  distributions=dists, values=list(values),
                                                  user_attrs={"trial_id": t["trial_id"]}))
    return study


def importances(study, index: int | None = None) -> dict[str, dict[str, float] | str]:
    """fANOVA and PED-ANOVA importances of objective `index` (None: a single-objective study's
    value); a method that cannot run on this study says why. With a target, PED-ANOVA ranks
    for LOW values, hence the sign flip of a maximised metric (stack.md)."""
    # with scikit-learn (about 2 s): only for the importances (see rebuild_study)
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    out = {}
    for name, evaluator, sign in (("fanova", FanovaImportanceEvaluator(seed=0), 1),
                                  ("ped_anova", PedAnovaImportanceEvaluator(), -1)):
        target = None if index is None else (lambda t, i=index, s=sign: s * t.values[i])
        try:
            out[name] = dict(get_param_importances(study, evaluator=evaluator, target=target))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:   # e.g. too few trials
            out[name] = f"not computable: {exc}"
    return out



def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="MultiFair search: sensitivity analysis and what was deployed")
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--experiment", default="")
    p.add_argument("--parent-run-id", default=None, help="default: the latest study run")
    p.add_argument("--results", default="", help="read a Tune study folder instead of MLflow")
    p.add_argument("--policy", choices=["full", "common"], default="full")
    p.add_argument("--epoch", type=int, default=None, help="with --policy common (default: grace period)")
    p.add_argument("--json", default="", help="also write the analysis here")
    a = p.parse_args(argv)
    if a.results:
        trials, max_epochs, grace, found = trials_from_results(a.results)
    elif a.tracking_uri and a.experiment:
        trials, max_epochs, grace, found = trials_from_mlflow(a.tracking_uri, a.experiment, a.parent_run_id)
    else:
        p.error("give --tracking-uri and --experiment, or --results")
    epoch = a.epoch or grace
    values = trial_values(trials, max_epochs, a.policy, epoch)
    what = f"trials that trained all {max_epochs} epochs" if a.policy == "full" else f"ES-AUC at epoch {epoch}"
    print(f"{len(trials)} trials, {len(values)} used ({what}; the search's own trials, mode {found['mode']})")
    report = {"policy": a.policy, "epoch": epoch if a.policy == "common" else max_epochs,
              "n_trials": len(trials), "n_used": len(values), "mode": found["mode"]}
    if len(values) >= 2:
        report["importance"] = importances(rebuild_study(values, found["mode"]))
        for method, imp in report["importance"].items():
            line = imp if isinstance(imp, str) else "  ".join(f"{k} {v:.3f}" for k, v in imp.items())
            print(f"importance ({method}): {line}")
    else:
        print("importance: needs at least 2 comparable trials")
    decision = read_decision(found["study_dir"])
    if decided(decision) or found["chosen"]:
        report["deployment"] = deployed(decision, found["chosen"])
        _print_deployment(report["deployment"])
    else:
        report["deployment"] = {"source": "none: no decision recorded (no confirmation stage)"}
        print("deployment: none, no decision recorded (no confirmation stage: the single-seed best is "
              "no evidence against the study's reference; `python -m search register --allow-unconfirmed` "
              "registers it anyway)")
    _write(report, a.json)
    return 0


def decided(decision: dict | None) -> bool:
    return bool(decision and (decision.get("confirmation") or {}).get("choice"))


def deployed(decision: dict | None, chosen: str) -> dict:
    """What the study's decision deployed: its label, hyperparameters, confirmation statistics,
    reason, run and registration (only the label when decision.json cannot be read)."""
    if not decided(decision):
        return {"source": "study run tag chosen", "label": chosen}
    conf = decision["confirmation"]
    label = conf["choice"]["label"]
    return {"source": "decision.json", "label": label, "reference": saved_reference(decision).name,
            "reason": conf["choice"].get("reason", ""),
            "params": conf["candidates"].get(label, {}), "stats": conf.get("stats", {}).get(label, {}),
            "run": decision.get("deployed_run"), "registered": decision.get("registered")}


def _print_deployment(dep: dict) -> None:
    stats = dep.get("stats") or {}
    shown = dep.get("reference", FUSION.name) if dep["label"] == "baseline" else dep["label"]
    mean = (f" mean val es_auc {stats['es_auc']:.4f} over {stats.get('n_seeds')} seeds"
            if isinstance(stats.get("es_auc"), (int, float)) else "")
    params = "  ".join(f"{k}={v:.4g}" for k, v in (dep.get("params") or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool))
    print(f"deployment: {shown} (the study's decision, {dep['source']}){mean}  {params}".rstrip())
    if dep.get("reason"):
        print(f"  why: {dep['reason']}")
    if dep.get("registered"):
        print(f"  registered: {dep['registered']}")


def _write(report: dict, path: str) -> None:
    if path:
        with open(path, "w") as f:
            f.write(dumps(report, indent=1, default=str))   # strict JSON: NaN -> null


if __name__ == "__main__":
    raise SystemExit(main())
