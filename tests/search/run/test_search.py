"""The search service end to end: real Ray, Optuna, MLflow (sqlite), the tiny trainer on
generated data. About 4-6 minutes on 2 cores."""
import json

import pytest

from search.runner import run_search
from search.record.space import HYPERPARAMETERS
from tests.search.conftest import study_runs

pytestmark = pytest.mark.slow


def test_search_asha_stops_trials_and_mlflow_has_every_trial(study):
    scfg, outcome = study
    assert not outcome.interrupted and outcome.failed == 0
    assert len(outcome.results) == 5
    assert outcome.stopped_early >= 1, "ASHA stopped no trial"
    assert outcome.best is not None and 0 <= outcome.best["val"]["es_auc"] <= 1

    client, parents, children = study_runs(scfg.tracking_uri)
    assert len(parents) == 1 and parents[0].info.run_id == outcome.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 5
    baseline = [c for c in children if all(float(c.data.params[k]) == v for k, v in scfg.baseline.items())]
    assert len(baseline) == 1, "the paper's point is evaluated"
    stopped = 0
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert set(HYPERPARAMETERS) <= set(params) and params["base.dataset"] == "fairvision"
        assert {tags["dataset"], tags["attribute"], tags["mode"], tags["seed"]} == {"fairvision", "gender", "full", "0"}
        assert tags["git_commit"]
        epochs = int(tags["epochs_trained"])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "es_auc")]
        assert steps == list(range(1, epochs + 1))
        assert tags["asha_stopped"] == str(epochs < scfg.max_epochs).lower()
        stopped += tags["asha_stopped"] == "true"
        assert "val/auc/female" in child.data.metrics and "mod/balance/oct" in child.data.metrics
        assert {"val/reliance/slo/auc", "val/dpd_at_val_threshold"} <= set(child.data.metrics)
        assert not any("note" in k.lower() and "note_" not in k.lower() for k in child.data.metrics)
    assert stopped == outcome.stopped_early
    best = client.get_run(outcome.best_run_id)
    assert best.data.tags.get("model_logged") == "true"
    # the test split is scored once, for the chosen trial only, and only aggregates are logged
    test = outcome.best["test"]
    assert 0 <= test["test/auc"] <= 1 and test["test/auc_std"] > 0
    assert best.data.metrics["test/es_auc"] == pytest.approx(test["test/es_auc"])
    assert {"test/reliance/oct/auc", "test/dpd_at_val_threshold"} <= set(best.data.metrics)
    assert client.get_run(outcome.parent_run_id).data.metrics["test/auc"] == pytest.approx(test["test/auc"])
    assert sum("test/auc" in c.data.metrics for c in study_runs(scfg.tracking_uri)[2]) == 1


def test_relog_fills_an_empty_store_twice_without_duplicates(study, tmp_path):
    from search.record.relog import relog

    scfg, outcome = study
    uri = "sqlite:///" + str(tmp_path / "relog.db")
    counts = []
    for _ in range(2):
        relog(scfg.study_dir, uri)
        client, parents, children = study_runs(uri)
        assert len(parents) == 1 and len(children) == 5
        counts.append(sorted(len(client.get_metric_history(c.info.run_id, "es_auc")) for c in children))
        assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert counts[0] == counts[1]
    live = sorted(int(r.data.tags["epochs_trained"]) for r in study_runs(scfg.tracking_uri)[2])
    assert counts[0] == live
    # re-logging into the store the search wrote live adds nothing either
    relog(scfg.study_dir, scfg.tracking_uri)
    assert len(study_runs(scfg.tracking_uri)[2]) == 5


def test_failing_trial_is_retried_then_failed_and_study_finishes(ray_session, search_config, tmp_path):
    scfg = search_config(tmp_path, num_samples=3, max_epochs=2, max_failures=1, scheduler="none",
                         log_best_model=False,
                         test_hooks={"fail_baseline_trial": True, "fail_at_epoch": 2})
    outcome = run_search(scfg)
    assert outcome.failed == 1 and not outcome.interrupted
    assert outcome.best is not None
    _, parents, children = study_runs(scfg.tracking_uri)
    assert parents[0].info.status == "FINISHED"
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["retries"] == "1"
    assert float(failed[0].data.params["rho"]) == scfg.baseline["rho"]
    assert sum(c.info.status == "FINISHED" for c in children) == 2


# The entry script copied alone into an empty folder: tests/search/run/test_loopback.py (one search
# serves both checks).


# Ctrl-C and --resume (the entry script interrupted, finished trials not trained again, one
# MLflow run per trial): tests/search/record/test_study_format.py, whose resume also migrates the
# study's format (one search serves both checks).


def test_analysis_reports_and_register_refuses_an_unconfirmed_champion(study, tmp_path, capsys):
    """`python -m search analyze` reports (importances; no decision, nothing deployed) and
    registers nothing; `python -m search register` refuses the single-seed best of a study
    without a decision, and registers it only with --allow-unconfirmed."""
    from search.decide.champion import main as register
    from search.record.analysis import main as analyze

    from mlflow import MlflowClient

    scfg, outcome = study
    report = tmp_path / "analysis.json"
    assert analyze(["--tracking-uri", scfg.tracking_uri, "--experiment", scfg.experiment,
                    "--policy", "common", "--epoch", "1", "--json", str(report)]) == 0
    assert "deployment: none, no decision recorded" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["n_used"] == 5 and set(data["importance"]["fanova"]) == set(HYPERPARAMETERS)
    assert "registered" not in data
    args = ["--tracking-uri", scfg.tracking_uri, "--experiment", scfg.experiment, "--name", "multifair-test",
            "--json", str(report)]
    assert register(args) == 1   # no confirmation, no decision: refused, nothing registered
    assert "no decision recorded" in capsys.readouterr().err
    assert not MlflowClient(scfg.tracking_uri).search_registered_models("name = 'multifair-test'")
    assert register(args + ["--allow-unconfirmed"]) == 0
    data = json.loads(report.read_text())
    assert data["deployment"]["trial_id"] == outcome.best["trial_id"]
    assert data["registered"] == "models:/multifair-test@champion"
    version = MlflowClient(scfg.tracking_uri).get_model_version_by_alias("multifair-test", "champion")
    assert version.run_id == outcome.best_run_id


def test_killed_trial_resumes_exactly(ray_session, search_config, tmp_path):
    """The baseline trial's worker is SIGKILLed while in epoch 3 (as an OOM kill would); Tune
    retries it on a new worker, which resumes from the epoch-2 checkpoint: every epoch's
    validation figures equal those of an uninterrupted fit of the same configuration here."""
    import torch

    from search.runner import base_config
    from trainer.loop import fit

    scfg = search_config(tmp_path, num_samples=1, max_epochs=4, max_failures=1, scheduler="none",
                         checkpoint_every=1, log_best_model=False, final_test=False,
                         test_hooks={"kill_baseline_once_at_epoch": 3})
    outcome = run_search(scfg)
    assert outcome.failed == 0 and not outcome.interrupted
    rows = outcome.results[0].metrics_dataframe.to_dict("records")
    by_epoch = {int(r["epoch"]): r for r in rows}      # epochs reported twice: the later one
    assert sorted(by_epoch) == [1, 2, 3, 4]
    resumed_at = {int(r["attempt_start_epoch"]) for r in rows}
    assert resumed_at == {1, 3}, f"attempts started at epochs {resumed_at}: not resumed from epoch 2"
    _, _, children = study_runs(scfg.tracking_uri)
    assert children[0].data.tags.get("retries") == "1"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the 1-CPU trial: the same float summation order
    try:
        straight = fit(base_config(scfg).replace(evaluate_test=False), progress=False)
    finally:
        torch.set_num_threads(threads)
    keys = ["val/auc", "val/es_auc", "val/dpd", "train/loss"]
    for entry in straight["history"]:
        got = by_epoch[int(entry["epoch"])]
        assert [got[k] for k in keys] == pytest.approx([entry[k] for k in keys], rel=1e-6), entry["epoch"]


# Golden figures of the shared 5-trial study (tests/search/conftest.py `study`: seed 0, tiny
# preset, the "search" data): each trial's five hyperparameters (the paper's point first, then
# TPE's seeded start) and its epoch-1 train loss and validation AUC and ES-AUC. Each trial runs on
# one CPU thread, so they do not depend on which trial ran beside it; ASHA's stops do (2 at a
# time), so only epoch 1, which every trial trains, is pinned. A change to the sampler's seeding,
# the space, the trial's config, the trainer or the metrics moves them: rerun and explain the new
# numbers before updating.
GOLDEN_STUDY = [   # rho, lambda_gm, tau, delta, lambda_f; epoch 1: train loss, val AUC, val ES-AUC
    [0.6306939495523111, 0.01097581541938016, 0.10786410564546556, 0.7892489134023579, 1.238173939681026, 0.70906001329422, 0.697391304347826, 0.6569628229363579],
    [1.2, 0.15, 0.04, 0.3, 0.5, 0.7755897045135498, 0.7217391304347825, 0.6419116553467848],
    [1.3232202558909871, 0.269388301928541, 0.04619905512862269, 0.567639023847052, 0.23861097124304623, 0.8340635299682617, 0.7895652173913043, 0.6622159887798035],
    [1.4688411695999841, 0.07501954443620121, 0.13416642577896967, 0.9654796224759779, 0.20571517081508356, 0.7549381852149963, 0.7217391304347827, 0.6546006066734076],
    [1.6875875571239969, 0.11423254155608371, 0.04064540627628723, 0.9293168063780279, 0.06497915076728417, 0.7792131304740906, 0.7495652173913043, 0.6591441596000196],
]


def test_a_seeded_search_gives_its_known_trials(study):
    scfg, outcome = study
    got = []
    for t in outcome.trials:
        first = t["result"].metrics_dataframe.sort_values("epoch").iloc[0]
        assert int(first["epoch"]) == 1
        got.append([t["params"][k] for k in HYPERPARAMETERS]
                   + [float(first[k]) for k in ("train/loss", "val/auc", "es_auc")])
    got.sort()
    assert len(got) == len(GOLDEN_STUDY) == 5, got
    for row, pinned in zip(got, GOLDEN_STUDY):
        assert row == pytest.approx(pinned, rel=1e-4, abs=1e-5), (row, pinned)
