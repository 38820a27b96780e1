"""Multi-node Ray on this host (head + worker raylets, tests/search/multinode.py) with the study on
S3 (moto's server mode: a FAKE of AWS S3 started here). A worker node is lost mid-search and the
driver is SIGKILLed then resumed; every trial finishes, one MLflow run each, no metric gaps or
duplicates; the embedded driver leaves nothing behind when killed; Ray Jobs. Slow: 0.8-3 min
each on 2 shared cores, about 9 min for the file (seen 2026-11-23 with other suites running)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.search.conftest import REPO, study_runs
from tests.search.multinode import LocalCluster
from tests.search.servers import FakeS3

pytestmark = pytest.mark.slow
EPOCHS = 5   # reused workers train an epoch in well under a second: time to lose a node mid-trial
SAMPLES = 3


@pytest.fixture
def fake_s3():
    s3 = FakeS3()
    yield s3
    s3.close()


@pytest.fixture
def two_nodes(fake_s3, cache_dir):
    """Head and one worker, 1 CPU each; AWS_* for the fake S3 reach every raylet's workers."""
    cluster = LocalCluster({"head": {"num_cpus": 1}, "w1": {"num_cpus": 1}},
                           env=fake_s3.env)
    yield cluster
    cluster.close()
    assert cluster.alive() == [], "Ray processes left behind"


def search_args(data_root, storage, db, samples=SAMPLES, epochs=EPOCHS):
    return ["--data-root", data_root, "--preset", "tiny", "--num-samples", str(samples),
            "--max-epochs", str(epochs), "--grace-period", str(epochs), "--max-concurrent", "2",
            "--cpus-per-trial", "1", "--storage-path", storage, "--tracking-uri", db,
            "--no-final-test", "--finalists", "0", "--no-figures", "--name", "mn",
            "--checkpoint-every", "1"]   # resume state every epoch: a lost trial repeats <= 1


def start_driver(env, args, log):
    return subprocess.Popen([sys.executable, str(REPO / "search" / "fairvision_gender.py"), *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=log.name.rsplit("/", 1)[0])


def wait_for(predicate, proc, timeout=240, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, f"the search ended before {what}"
        time.sleep(0.5)
    raise TimeoutError(what)


def runs(db):
    """The study's runs, once the driver has created the store (two processes migrating one
    fresh sqlite file at once break it: "No such constraint: 'uq_experiments_name'")."""
    log = Path(db.removeprefix("sqlite:///")).parent / "driver.log"
    if "[search] MLflow:" not in log.read_text():
        return None, [], []
    try:
        return study_runs(db)
    except IndexError:   # no experiment yet
        return None, [], []


def check_complete(db, samples=SAMPLES):
    """One FINISHED run per trial, each with es_auc at steps 1..EPOCHS exactly once."""
    client, parents, children = study_runs(db)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    lost = [c for c in children if c.data.tags.get("lost_at_driver_restart") == "true"]
    # a trial started after the killed driver's last snapshot: the study samples another in its
    # place; its run is kept, ended as KILLED and tagged, and is not one of the study's trials
    assert all(c.info.status == "KILLED" for c in lost)
    children = [c for c in children if c not in lost]
    assert len(children) == samples
    assert len({c.data.tags["trial_id"] for c in children}) == samples, "duplicate MLflow runs"
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "es_auc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (c.data.tags["trial_id"], steps)
    return children


def test_multinode_worker_lost_trials_resume_on_survivor_from_checkpoint(two_nodes, fake_s3, data_root,
                                                                         tmp_path):
    db = "sqlite:///" + str(tmp_path / "mlflow.db")
    w1 = two_nodes.node_ids["w1"]
    with open(tmp_path / "driver.log", "w") as log:
        proc = start_driver(two_nodes.driver_env(), search_args(data_root, fake_s3.uri("studies"), db), log)

    def trial_on_w1_mid_way():
        client, _, children = runs(db)
        for c in children:
            if c.data.tags.get("ray_node_id") == w1 and c.info.status == "RUNNING":
                done = len(client.get_metric_history(c.info.run_id, "es_auc"))
                if 1 <= done <= 2:
                    return c.data.tags["trial_id"], done
        return None

    try:
        lost_trial, done = wait_for(trial_on_w1_mid_way, proc, what="a trial on w1 reported an epoch")
        two_nodes.remove("w1")
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, (tmp_path / "driver.log").read_text()[-4000:]

    children = check_complete(db, SAMPLES)
    nodes = {n for c in children for n in c.data.tags["ray_nodes"].split(",")}
    assert nodes == set(two_nodes.node_ids.values()), "trials ran on both nodes"
    moved = {c.data.tags["trial_id"]: c.data.tags for c in children if "," in c.data.tags["ray_nodes"]}
    assert lost_trial in moved
    for tags in moved.values():
        assert tags["ray_nodes"].split(",")[0] == w1 and tags["ray_node_id"] == two_nodes.node_ids["head"]
        if tags["trial_id"] != lost_trial and "resumed_at_epochs" not in tags:
            # it had trained every epoch on w1; only its end reached the driver from the head
            assert tags.get("end_reported_again") == "true" and "epochs_repeated" not in tags, tags
            continue
        resumed_at = [int(e) for e in tags["resumed_at_epochs"].split(",")]
        assert resumed_at[0] > 1, "resumed from epoch 1, not from its checkpoint"
        repeated = int(tags.get("epochs_repeated", 0))
        print(f"trial {tags['trial_id']}: lost on w1, resumed at epoch {resumed_at[0]}, "
              f"epochs repeated {repeated}")
        assert repeated <= 1
    # its checkpoint of epoch `done` was on S3 before the node was lost
    assert int(moved[lost_trial]["resumed_at_epochs"].split(",")[0]) >= done + 1
    keys = fake_s3.keys("studies/mn/")
    assert any("/checkpoint_" in k for k in keys) and any(k.endswith("study.json") for k in keys)


def descendants(pid):
    import psutil

    return {p.pid: (p.create_time(), p.name()) for p in psutil.Process(pid).children(recursive=True)}


def still_running(snapshot, wait=15):
    """Processes of `snapshot` (pid -> (start time, name)) still running after `wait` seconds."""
    import psutil

    deadline = time.time() + wait
    while True:
        left = []
        for pid, (created, _) in snapshot.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {p.name()}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.time() > deadline:
            return left
        time.sleep(1)


def kill_when(proc, db, predicate, what):
    """SIGKILL the driver (its pid only, as an OOM killer would) once `predicate(children)`."""
    wait_for(lambda: predicate(runs(db)[2]), proc, what=what)
    snapshot = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return snapshot


def test_multinode_driver_sigkill_then_resume_no_rerun_no_duplicates(two_nodes, fake_s3, data_root,
                                                                    tmp_path):
    db = "sqlite:///" + str(tmp_path / "mlflow.db")
    args = search_args(data_root, fake_s3.uri("studies"), db)
    with open(tmp_path / "driver.log", "w") as log:
        proc = start_driver(two_nodes.driver_env(), args, log)
    try:
        snapshot = kill_when(proc, db, lambda ch: any(c.info.status == "FINISHED" for c in ch),
                             "a trial finished")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert still_running(snapshot) == [], "the killed driver left processes behind"
    client, _, before = study_runs(db)
    finished = {c.data.tags["trial_id"]: len(client.get_metric_history(c.info.run_id, "es_auc"))
                for c in before if c.info.status == "FINISHED"}

    with open(tmp_path / "resume.log", "w") as log:
        proc = start_driver(two_nodes.driver_env(), [*args, "--resume"], log)
        proc.wait(timeout=400)
    assert proc.returncode == 0, f"rc {proc.returncode}\n" + (tmp_path / "resume.log").read_text()[-4000:]
    children = check_complete(db)
    for c in children:
        tags = c.data.tags
        repeated = int(tags.get("epochs_repeated", 0))
        print(f"trial {tags['trial_id']}: finished before the kill {tags['trial_id'] in finished}, "
              f"resumed at {tags.get('resumed_at_epochs', '-')}, epochs repeated {repeated}")
        if tags["trial_id"] in finished:
            assert repeated == 0 and "resumed_at_epochs" not in tags, "a finished trial ran again"


def test_multinode_embedded_driver_sigkill_leaves_no_ray_processes(data_root, tmp_path, cache_dir):
    """--local: the driver starts its own Ray; SIGKILL it mid-search, then nothing of it runs."""
    from tests.search.multinode import node_env

    db = "sqlite:///" + str(tmp_path / "mlflow.db")
    raytmp = tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp")   # socket paths < 107 bytes
    env = node_env(raytmp)
    args = [*search_args(data_root, str(tmp_path / "results"), db, samples=2, epochs=2), "--local",
            "--num-cpus", "1"]
    with open(tmp_path / "driver.log", "w") as log:
        proc = start_driver(env, args, log)
    try:
        snapshot = kill_when(proc, db, lambda ch: bool(ch), "a trial started")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(raytmp, ignore_errors=True)
    names = {name for _, name in snapshot.values()}
    assert {"gcs_server", "raylet"} <= names, names   # it did start its own Ray
    assert still_running(snapshot) == [], "the killed driver left Ray processes behind"



def test_multinode_ray_job_submit_working_dir(fake_s3, data_root, tmp_path, cache_dir):
    """`ray job submit --working-dir <repo> -- python search/fairvision_gender.py ...` against a
    token-authenticated two-node cluster whose nodes do NOT have the project on their path: the
    driver and the trials import it from the uploaded working directory."""
    cluster = LocalCluster({"head": {"num_cpus": 1}, "w1": {"num_cpus": 1, "own_temp_dir": True}},
                           env={**fake_s3.env, "PYTHONPATH": ""}, dashboard=True)
    try:
        db = "sqlite:///" + str(tmp_path / "mlflow.db")
        env = {k: v for k, v in cluster.driver_env().items() if k != "RAY_ADDRESS"}
        ray_cli = str(Path(sys.executable).parent / "ray")
        # the project as a user uploads it: the tracked tree, without a local .venv or results
        # (a CI clone holds a 6 GB .venv, over the Jobs API's upload limit)
        project = tmp_path / "project"
        shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(
            ".venv", ".git", "results", "data", "multifair-results", "*.egg-info", "__pycache__"))
        cmd = [ray_cli, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(project),
               "--", sys.executable, "search/fairvision_gender.py",
               *search_args(data_root, fake_s3.uri("jobs"), db, samples=2, epochs=1)]
        deadline = time.time() + 90
        while True:   # the head's job agent registers a few seconds after the node is up
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
            if "No available agent to submit job" not in out.stderr or time.time() > deadline:
                break
            time.sleep(3)
        assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
        _, parents, children = study_runs(db)
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        # node tags come from this branch's search/ (uploaded), not from any installed copy
        nodes = {c.data.tags["ray_node_id"] for c in children}
        assert nodes == set(cluster.node_ids.values()), "the job's trials ran on both nodes"
        unauthenticated = subprocess.run([ray_cli, "job", "list", "--address", cluster.dashboard_url],
                                         env={k: v for k, v in env.items() if not k.startswith("RAY_AUTH")},
                                         capture_output=True, text=True, timeout=120)
        assert unauthenticated.returncode != 0, "the Jobs API answered without the token"
    finally:
        cluster.close()
        assert cluster.alive() == []
