"""The deployment decision end to end (slow, about 2-4 minutes on 2 cores): a Pareto search, the
confirmation stage, the paired test, figures, report, registry with alias champion, the scoring
command, and the MLflow UI of a real `mlflow server` in headless Chromium."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_pareto_confirmation_paired_test_and_champion(decided):
    from mlflow import MlflowClient

    from search.record.study import DECISION_FILE, read_json

    scfg, outcome = decided
    d = outcome.decision
    assert d["front"] and all(0 <= t["auc"] <= 1 for t in d["front"])
    conf = d["confirmation"]
    assert "baseline" in conf["candidates"] and "paper" in conf["candidates"]
    assert all(s["n_seeds"] == 2 for s in conf["stats"].values())
    label = conf["choice"]["label"]
    ev = conf["choice"]["evidence"]["candidates"]
    best = max((k for k in conf["stats"] if k != "baseline"), key=lambda k: conf["stats"][k]["es_auc"])
    shown = [k for k, r in ev.items() if r["p_holm"] <= 0.05 and r["diff"] > 0]
    beats = bool(shown)
    # the rule (no AUC floor): the best mean among those shown better, else plain fusion
    assert label == (max(shown, key=lambda k: ev[k]["diff"]) if beats else "baseline")
    assert conf["choice"]["fell_back_to_baseline"] == (not beats)
    assert conf["choice"]["best_candidate"] == best
    for k, r in ev.items():                                      # the evidence matches the stats
        assert r["diff"] == pytest.approx(conf["stats"][k]["es_auc"] - conf["stats"]["baseline"]["es_auc"])
        assert r["diff_lo"] <= r["diff"] <= r["diff_hi"] and r["p"] <= r["p_holm"] <= 1
    assert conf["choice"]["reason"].startswith(f"{label}: shown better" if beats else "plain fusion: no candidate")
    assert read_json(scfg.study_dir, DECISION_FILE)["confirmation"]["choice"]["label"] == label

    client = MlflowClient(scfg.tracking_uri)
    exp = client.get_experiment_by_name(scfg.experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    confirm = [r for r in runs if r.data.tags.get("run_kind") == "confirm"]
    assert len(confirm) == 2 * len(conf["candidates"])
    assert {r.info.run_name for r in confirm} == {f"confirm-{c}-seed{s}" for c in conf["candidates"]
                                                  for s in conf["seeds"]}
    trials = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    assert all(r.info.run_name == f"full-{r.data.tags['trial_id']}" for r in trials)
    parent = client.get_run(outcome.parent_run_id)
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/pareto_front.png", "figures/pareto_front.html", "figures/slice_es_auc.png"} <= artifacts
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "report")] == ["report/report.html"]

    test = d["test"]                      # the best candidate against plain fusion, either way
    assert test["candidate"] == best and test["deployed"] == label
    assert test["auc"]["diff_lo"] <= test["auc"]["diff"] <= test["auc"]["diff_hi"]
    side = "chosen" if beats else "baseline"                     # the deployed model's figures
    version = client.get_model_version_by_alias("multifair-test", "champion")
    assert version.run_id == d["deployed_run"]["run_id"]
    assert float(version.tags["test.auc"]) == pytest.approx(test["auc"][side])
    assert client.get_run(version.run_id).data.metrics["test/auc"] == pytest.approx(test["auc"][side])
    report = Path(d["report"]).read_text()
    assert "Pareto front" in report and "paired" in report and label in report and "Holm p" in report


def test_analysis_uses_only_the_search_trials_and_names_the_decision(decided, tmp_path, capsys):
    """python -m search.record.analysis on a study with a confirmation: importances from the search's 3
    trials only (the confirmation's re-runs, plain fusion among them, are left out), and the
    deployment line names what the decision deployed, from MLflow and from the results folder."""
    import json

    from search.record.analysis import main
    from search.record.space import hyperparameters

    scfg, outcome = decided
    conf = outcome.decision["confirmation"]
    label = conf["choice"]["label"]
    for source in (["--tracking-uri", scfg.tracking_uri, "--experiment", scfg.experiment],
                   ["--results", scfg.study_dir]):
        out = tmp_path / "analysis.json"
        assert main([*source, "--policy", "common", "--epoch", "1", "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        data = json.loads(out.read_text())
        assert data["n_trials"] == data["n_used"] == scfg.num_samples == 3, printed
        assert printed.startswith("3 trials, 3 used")
        fanova = data["importance"]["fanova"]
        assert isinstance(fanova, dict) and set(fanova) == set(hyperparameters(scfg.mode))
        dep = data["deployment"]
        assert dep["source"] == "decision.json" and dep["label"] == label
        assert dep["params"] == conf["candidates"][label]
        assert dep["stats"]["es_auc"] == pytest.approx(conf["stats"][label]["es_auc"])
        shown = "plain fusion" if label == "baseline" else label
        assert f"deployment: {shown} (the study's decision" in printed
    # `python -m search register` never registers a second pick over the decision's champion
    from search.decide.champion import main as register

    assert register(["--tracking-uri", scfg.tracking_uri, "--experiment", scfg.experiment,
                     "--name", "multifair-test", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["registered"] == outcome.decision["registered"]


def test_relog_rebuilds_the_confirmation_runs_as_the_live_search_logged_them(decided, tmp_path):
    """A store that lost the study (or never had it: --no-tracking, a cluster without the
    server) gets the confirmation runs back from the results folders: the same names, tags,
    params and per-epoch histories as logged live; a second relog adds nothing."""
    from mlflow import MlflowClient

    from search.decide.pyfunc import MODEL_CONFIG
    from search.record.relog import relog

    scfg, outcome = decided

    def confirm_runs(uri):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(scfg.experiment)
        runs = client.search_runs([exp.experiment_id], max_results=200)
        return client, {r.info.run_name: r for r in runs if r.data.tags.get("run_kind") == "confirm"}

    live_client, live = confirm_runs(scfg.tracking_uri)
    uri = "sqlite:///" + str(tmp_path / "relog.db")
    for _ in range(2):
        relog(scfg.study_dir, uri)
        client, got = confirm_runs(uri)
        assert set(got) == set(live) and len(got) == 2 * len(outcome.decision["confirmation"]["candidates"])
    for name, run in got.items():
        ref = live[name]
        for tag in ("candidate", "seed", "mode", "stage", "trial_id", "epochs_trained"):
            assert run.data.tags[tag] == ref.data.tags[tag], (name, tag)
        # MLflow records a logged model's model_config as params of its run (the deployed run's:
        # search/decide/pyfunc.py MODEL_CONFIG); relog rebuilds runs, never the registered model
        live_params = dict(ref.data.params)
        if ref.data.tags.get("model_logged") == "true":
            assert {k: live_params.pop(k) for k in MODEL_CONFIG} == {k: str(v) for k, v in MODEL_CONFIG.items()}
        assert run.data.params == live_params, name
        assert run.info.status == ref.info.status == "FINISHED"
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/es_auc")]
        assert sorted(history) == sorted((m.step, m.value) for m in
                                         live_client.get_metric_history(ref.info.run_id, "val/es_auc"))
    parent = [r for r in client.search_runs([client.get_experiment_by_name(scfg.experiment).experiment_id])
              if r.data.tags.get("run_kind") == "study"]
    assert len(parent) == 1 and parent[0].data.tags["confirmation_runs"] == str(len(live))


def test_champion_scores_a_data_folder_to_a_local_file_with_the_logged_metrics(decided, data_root, tmp_path):
    import mlflow

    from search.decide.registry import main
    from trainer.metrics import roc_auc_score

    scfg, outcome = decided
    out = tmp_path / "predictions.csv"
    mlflow.set_tracking_uri(scfg.tracking_uri)
    assert main(["--model", "models:/multifair-test@champion", "--tracking-uri", scfg.tracking_uri,
                 "--data-root", data_root, "--split", "test", "--out", str(out)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    y = [int(r[1]) for r in rows]
    p = [float(r[3]) for r in rows]
    test = outcome.decision["test"]       # the deployed model's column: candidate or plain fusion
    logged = test["auc"]["chosen" if test["deployed"] != "baseline" else "baseline"]
    assert roc_auc_score(y, p) == pytest.approx(logged, abs=1e-6)   # sklearn on the written file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_ui_in_a_real_browser_shows_trials_a_chart_and_a_figure(decided, tmp_path):
    from tests.search.servers import system_package

    system_package(bool(shutil.which("chromedriver")), "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    scfg, outcome = decided
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", scfg.tracking_uri,
         "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": ""})
    url = f"http://127.0.0.1:{port}"
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        opts.add_argument(arg)
    driver = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        wait = WebDriverWait(driver, 90)
        exp = outcome.experiment_id
        trial = outcome.trials[0]["trial_id"]
        # the runs table of the training view; the trials are nested under the study row
        driver.get(f"{url}/#/experiments/{exp}?workflowType=machine_learning")
        expand = wait.until(lambda d: d.find_elements(
            "css selector", "button[data-component-id*='runnamecellrenderer']"))
        assert "fairvision-gender-full" in driver.page_source                # the study run
        expand[0].click()
        wait.until(lambda d: f"full-{trial}" in d.page_source)              # a trial run, by name
        # a metric chart of the chosen run (per-epoch history)
        child = outcome.decision["deployed_run"]["run_id"]
        driver.get(f"{url}/#/experiments/{exp}/runs/{child}/model-metrics?workflowType=machine_learning")
        box = wait.until(lambda d: d.find_elements("css selector", "input[placeholder='Search metric charts']"))
        box[0].send_keys("es_auc")
        wait.until(lambda d: d.find_elements("xpath", "//*[text()='es_auc']")
                   and d.find_elements("css selector", "svg.main-svg"))
        # a figure of the study run, rendered by the artifact viewer
        parent = outcome.parent_run_id
        driver.get(f"{url}/#/experiments/{exp}/runs/{parent}/artifacts/figures/pareto_front.png")
        wait.until(lambda d: any((img.get_attribute("src") or "").startswith("blob:")
                                 for img in d.find_elements("css selector", "img")))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
