"""Tracking URIs, the search space, and a real `mlflow server` filled by the re-log command."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from search.runner import main
from search.record.space import RANGES, baseline_point
from search.record.tracking import TrackingUnavailable, check_tracking_uri, default_tracking_uri, ui_hint
from tests.search.conftest import study_runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dataset", ["fairvision", "fairvlmed"])
@pytest.mark.parametrize("attribute", ["gender", "race"])
def test_paper_point_inside_ranges_and_tau_positive(dataset, attribute):
    point = baseline_point(dataset, attribute)
    assert all(RANGES[k].low <= v <= RANGES[k].high for k, v in point.items())
    assert RANGES["tau"].low > 0


def test_default_tracking_uri_is_absolute_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri(tmp_path / "results")
    assert uri == f"sqlite:///{tmp_path}/results/mlflow.db" and uri.startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert default_tracking_uri(tmp_path) == "http://example:5000"
    assert ui_hint("http://h:5000", "3")[1] == "http://h:5000/#/experiments/3?workflowType=machine_learning"


def test_unreachable_server_stops_before_the_search(tmp_path, capsys):
    port = free_port()
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)
    rc = main("fairvision", "gender", argv=["--tracking-uri", f"http://127.0.0.1:{port}",
                                            "--storage-path", str(tmp_path), "--preset", "tiny"])
    assert rc == 2 and "search.record.relog" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/trial_*"))
    with pytest.raises(TrackingUnavailable):
        check_tracking_uri("file:///tmp/mlruns")


@pytest.mark.slow
def test_relog_into_a_real_mlflow_server(study, tmp_path):
    from search.record.relog import relog

    scfg, _ = study
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": ""})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        relog(scfg.study_dir, uri)
        relog(scfg.study_dir, uri)
        _, parents, children = study_runs(uri)
        assert len(parents) == 1 and len(children) == 5
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_resumed_trial_replays_epochs_a_killed_driver_never_logged(tmp_path):
    """A driver killed between Tune receiving epoch 2 and MLflow logging it: the trial resumes
    from its epoch-2 checkpoint and its first report carries the earlier epochs; the callback
    logs the missing one, once, and nothing twice."""
    import json
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from search.record.tracking import StudyTracker
    from search.record.trial_callback import MLflowTrialCallback

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    tracker = StudyTracker(uri, "multifair-replay", str(tmp_path / "study"),
                           artifact_root=str(tmp_path / "artifacts"))
    tracker.start_study(tags={}, params={})
    callback = MLflowTrialCallback(tracker, max_epochs=3, trial_tags={}, base={})
    trial = SimpleNamespace(trial_id="t1", config={"rho": 1.0}, last_result={})   # Tune's Trial fields read

    def epoch(e):
        return {"epoch": e, "val/es_auc": 0.5 + e / 10, "val/auc": 0.6 + e / 10,
                "es_auc": 0.5 + e / 10, "auc": 0.6 + e / 10}

    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, epoch(1))
    # epoch 2 reached Tune and its checkpoint, never MLflow; the resumed attempt reports epoch 3
    callback.on_trial_result(0, [], trial, {**epoch(3), "replay": json.dumps([epoch(1), epoch(2)])})
    assert callback.flush(timeout=60)   # the callback logs off Tune's loop, on its own thread
    run_id = tracker._children["t1"]
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "es_auc")]
    assert sorted(steps) == [1, 2, 3]
    values = {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, "val/auc")}
    assert values[2] == pytest.approx(0.8)
