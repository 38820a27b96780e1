"""The team MLflow server (mlflow/serve.sh): PostgreSQL for runs and users, basic-auth, artifacts
on S3 (moto's server mode: a FAKE of AWS S3 started here). One server for the module, started
with the test settings of shared/docs/stack.md (one worker, no job workers). Slow: about 3 min."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from tests.search.conftest import REPO
from tests.search.multinode import node_env
from tests.search.servers import FakeS3, MLflowServer, Postgres

pytestmark = pytest.mark.slow
ADMIN_PW = "admin-" + os.urandom(8).hex()
USERS = {"alice": "alice-" + os.urandom(8).hex(), "bob": "bob-" + os.urandom(8).hex()}


@pytest.fixture(scope="module")
def team_server():
    root = tempfile.mkdtemp(prefix="mf-team-", dir="/tmp")
    os.chmod(root, 0o755)
    started = []
    try:
        s3 = FakeS3("team-artifacts")
        started.append(s3)
        pg = Postgres(root, "pg-" + os.urandom(8).hex())
        started.append(pg)
        pwfile = os.path.join(root, "admin-password")
        with open(pwfile, "w") as f:
            f.write(ADMIN_PW + "\n")
        env = {**s3.env, "MLFLOW_STORE": os.path.join(root, "store"),
               "MLFLOW_BACKEND_STORE_URI": pg.create_db("mlflow"),
               "MLFLOW_AUTH_DATABASE_URI": pg.create_db("mlflow_auth"),
               "MLFLOW_ARTIFACTS_DESTINATION": "s3://team-artifacts/mlflow",
               "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": pwfile}
        server = MLflowServer(root, env)
        started.append(server)
        from mlflow.server import get_app_client

        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PW)
        try:
            users = get_app_client("basic-auth", tracking_uri=server.url)
            for name, pw in USERS.items():
                users.create_user(name, pw)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME"), os.environ.pop("MLFLOW_TRACKING_PASSWORD")
        yield server, s3
    finally:
        for thing in reversed(started):
            thing.close()
        shutil.rmtree(root, ignore_errors=True)


def call(url, path, user=None, password=None, body=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    if user:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, None


def client_as(url, user):
    """An MlflowClient sending `user`'s credentials (MLflow reads them from the environment)."""
    from mlflow import MlflowClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=USERS.get(user, ADMIN_PW))
    return MlflowClient(url)


@pytest.fixture(autouse=True)
def _no_credentials_left():
    yield
    os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
    os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


def test_serve_sh_refuses_no_password_and_unauthenticated_public_bind(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{os.path.dirname(sys.executable)}:{env['PATH']}"
    out = subprocess.run(["bash", str(REPO / "mlflow" / "serve.sh"), str(tmp_path / "s"), "5999"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in out.stderr, out.stderr
    out = subprocess.run(["bash", str(REPO / "mlflow" / "serve.sh"), str(tmp_path / "s"), "5999", "0.0.0.0"],
                         env={**env, "MLFLOW_NO_AUTH": "1"}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "refused" in out.stderr, out.stderr


def test_team_server_refuses_unauthenticated_and_enforces_permissions(team_server):
    server, _ = team_server
    search = "/api/2.0/mlflow/experiments/search"
    assert call(server.url, search, body={"max_results": 10})[0] == 401
    assert call(server.url, search, "alice", "wrong-password-123", {"max_results": 10})[0] == 401
    assert call(server.url, search, "alice", USERS["alice"], {"max_results": 10})[0] == 200

    exp = client_as(server.url, "alice").create_experiment("alice-only")
    run = client_as(server.url, "alice").create_run(exp).info.run_id
    bob = client_as(server.url, "bob")
    assert bob.get_experiment(exp).name == "alice-only"           # default permission: READ
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
        bob.log_metric(run, "x", 1.0)
    from mlflow.server import get_app_client

    client_as(server.url, "alice")
    get_app_client("basic-auth", tracking_uri=server.url).grant_user_permission("bob", "experiment", exp, "EDIT")
    client_as(server.url, "bob").log_metric(run, "x", 1.0)
    assert [m.value for m in client_as(server.url, "alice").get_metric_history(run, "x")] == [1.0]


WRITER = """
import sys
from mlflow import MlflowClient
c = MlflowClient(sys.argv[1])
for step in range(int(sys.argv[3])):
    c.log_metric(sys.argv[2], "val/es_auc", step / 1000, step=step)
"""


def test_team_server_concurrent_trial_writers_lose_no_metric(team_server):
    server, _ = team_server
    alice = client_as(server.url, "alice")
    exp = alice.create_experiment("concurrent")
    run_ids = [alice.create_run(exp).info.run_id for _ in range(4)]
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": USERS["alice"]}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, server.url, rid, "30"], env=env,
                                stderr=subprocess.PIPE, text=True) for rid in run_ids]
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    for rid in run_ids:
        steps = sorted(m.step for m in alice.get_metric_history(rid, "val/es_auc"))
        assert steps == list(range(30))


def test_search_logs_to_team_server_with_env_credentials_and_s3(team_server, data_root, tmp_path, cache_dir,
                                                               monkeypatch):
    """A real search (embedded Ray) writes its study to S3 and its runs, as alice, to the server;
    the chosen model's weights land in the S3 bucket through the server; re-log reads S3."""
    server, s3 = team_server
    env = {**node_env(tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp"), s3.env),
           "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": USERS["alice"]}
    env.pop("MLFLOW_S3_ENDPOINT_URL")   # clients need no S3 settings for MLflow: the server proxies
    storage = s3.uri("studies")
    args = ["--local", "--num-cpus", "2", "--data-root", data_root, "--preset", "tiny",
            "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2", "--max-concurrent", "2",
            "--storage-path", storage, "--tracking-uri", server.url, "--name", "team",
            "--no-final-test", "--finalists", "0", "--no-figures"]
    out = subprocess.run([sys.executable, str(REPO / "search" / "fairvision_gender.py"), *args],
                         env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)

    alice = client_as(server.url, "alice")
    exp = alice.get_experiment_by_name("multifair-fairvision-gender")
    runs = alice.search_runs([exp.experiment_id], "tags.run_kind = 'trial'")
    assert len(runs) == 2
    from mlflow.server import get_app_client

    client_as(server.url, "admin")   # the experiment the search created is alice's (MANAGE)
    owner = get_app_client("basic-auth", tracking_uri=server.url).get_user_permission(
        "alice", "experiment", exp.experiment_id)
    assert owner.permission == "MANAGE"
    alice = client_as(server.url, "alice")
    assert any(r.data.tags.get("model_logged") == "true" for r in runs)
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in s3.keys("mlflow/"))
    assert any(k.startswith("studies/team/") and "/checkpoint_" in k for k in s3.keys("studies/"))

    from search.record.relog import relog

    for k, v in s3.env.items():   # this process reads the study from the fake S3 itself
        monkeypatch.setenv(k, v)
    client_as(server.url, "alice")
    tracker = relog(s3.uri("studies/team"), server.url, "relogged-from-s3")
    copied = alice.search_runs([tracker.experiment_id], "tags.run_kind = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in copied) == sorted(r.data.tags["trial_id"] for r in runs)
    for r in copied:
        assert len(alice.get_metric_history(r.info.run_id, "es_auc")) == 2
