"""A search that trades ES-AUC against ES-AUC without the OCT, and a deployment report with the
champion's figures with each modality missing and on another site (issue 22, item 5): real
Ray, Optuna, MLflow (sqlite), the tiny trainer on generated data."""
import json
import math
from pathlib import Path

import pytest

from tests.search.run.test_robust_objectives import _skyline

pytestmark = pytest.mark.slow

MISSING_OCT = "val/missing/oct/es_auc"


def _rows(study_dir: str) -> dict[str, list[dict]]:
    return {p.parent.name.removeprefix("trial_"): [json.loads(line) for line in p.read_text().splitlines()]
            for p in Path(study_dir).glob("trial_*/result.json")}


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def test_pareto_with_es_auc_missing_oct_and_a_shifted_site(ray_session, search_config, dataset, tmp_path, capsys):
    from mlflow import MlflowClient

    from search.record.summary import print_summary
    from search.runner import run_search

    other_site = str(dataset("checkpoint"))   # another generated FairVision: the same layout
    scfg = search_config(tmp_path, objective="pareto", objectives="es_auc,es_auc_missing_oct", num_samples=4,
                         max_epochs=2, grace_period=1, finalists=1, confirm_seeds=2, shift_root=other_site,
                         register_name="multifair-robust")
    outcome = run_search(scfg)
    print_summary(scfg, outcome)
    out = capsys.readouterr().out
    assert not outcome.interrupted and not outcome.stopped_stage, out[-3000:]

    # every trial reported the figure each epoch; MLflow has it per trial
    rows = _rows(scfg.study_dir)
    assert len(rows) == 4 and all(MISSING_OCT in r and "val/missing/slo/es_auc" in r
                                  for trial in rows.values() for r in trial)
    client = MlflowClient(scfg.tracking_uri)
    children = client.search_runs([outcome.experiment_id], "tags.run_kind = 'trial'")
    assert len(children) == 4 and all(MISSING_OCT in c.data.metrics or
                                      not math.isfinite(_num(rows[c.data.tags["trial_id"]][-1][MISSING_OCT]))
                                      for c in children)

    # the front is the non-dominated set over (ES-AUC, ES-AUC without the OCT) of the full-length
    # trials at their best-ES-AUC epoch, recomputed here from result.json
    d = outcome.decision
    assert d["front_keys"] == ["es_auc", MISSING_OCT]
    points = {}
    for trial_id, trial in rows.items():
        if max(r["epoch"] for r in trial) < scfg.max_epochs:
            continue
        best = max((r for r in trial if math.isfinite(_num(r["es_auc"]))), key=lambda r: (r["es_auc"], -r["epoch"]))
        points[trial_id] = (best["es_auc"], _num(best[MISSING_OCT]))
    assert points and {t["trial_id"] for t in d["front"]} == _skyline(points)
    assert all(t["values"][MISSING_OCT] == pytest.approx(points[t["trial_id"]][1]) or
               not math.isfinite(points[t["trial_id"]][1]) for t in d["front"])

    # the deployed model: complete, each modality removed, the other site; console, report, MLflow
    rob = d["robustness"]
    assert set(rob["missing"]) == {"slo", "oct"} and rob["shift"]["n"] > 0
    assert rob["candidate"] == d["deployed_run"]["candidate"]
    assert "without oct (removed from all)" in out and "other site" in out and "Pareto front (es_auc, " in out
    report = Path(d["report"]).read_text()
    assert "Robustness of the deployed model" in report and "without oct" in report and "other site" in report
    metrics = client.get_run(outcome.parent_run_id).data.metrics
    assert {"test/missing/oct/auc", "test/missing/slo/auc", "test/shift/auc", "test/shift/n"} <= set(metrics)
    assert metrics["test/shift/n"] == rob["shift"]["n"]
    assert other_site not in json.dumps(client.get_run(outcome.parent_run_id).data.to_dictionary())


def test_floor_on_es_auc_without_oct_and_the_final_test_without_confirmation(ray_session, search_config, dataset,
                                                                          tmp_path, capsys):
    """--min-missing-es-auc oct=x on the es_auc objective, --finalists 0: the front's trials say
    whether they meet the floor (recomputed here), and the best trial's test, scored once, carries
    the missing-modality and other-site figures to the console and MLflow."""
    from mlflow import MlflowClient

    from search.record.summary import print_summary
    from search.runner import run_search

    scfg = search_config(tmp_path, num_samples=3, max_epochs=2, grace_period=1, min_missing_es_auc="oct=0.5",
                         shift_root=str(dataset("checkpoint")))
    outcome = run_search(scfg)
    print_summary(scfg, outcome)
    out = capsys.readouterr().out
    d = outcome.decision
    assert d["floors"] == {MISSING_OCT: 0.5} and "floors (infeasible below): val/missing/oct/es_auc >= 0.5000" in out
    best_epoch = {t["trial_id"]: t["best_epoch"] for t in outcome.trials}
    rows = _rows(scfg.study_dir)
    at_best = {k: _num(next(r[MISSING_OCT] for r in rows[k] if r["epoch"] == e)) for k, e in best_epoch.items() if e}
    assert d["front"] and all(f["feasible"] == (at_best[f["trial_id"]] >= 0.5) for f in d["front"])
    test = outcome.best["test"]
    assert {"test/missing/oct/auc", "test/missing/slo/auc", "test/shift/auc"} <= set(test)
    assert "other site, n " in out and "without slo (removed from all)" in out
    metrics = MlflowClient(scfg.tracking_uri).get_run(outcome.parent_run_id).data.metrics
    assert metrics["test/shift/auc"] == pytest.approx(test["test/shift/auc"])
