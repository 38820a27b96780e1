"""Servers the cluster tests start and stop themselves, all on 127.0.0.1 and free ports:

- `FakeS3`: moto's server mode, a FAKE of AWS S3 (an in-memory imitation of the S3 API; not
  AWS, not MinIO). It stands in for the bucket a real cluster shares between nodes.
- `Postgres`: Debian's PostgreSQL 15, a throw-away cluster run as the postgres user (initdb and
  pg_ctl refuse root).
- `MLflowServer`: mlflow/serve.sh, the team server the project ships.

Each is started in its own session and stopped by its process id / group, even on failure.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.search.multinode import REPO, free_port

BIN = Path(sys.executable).parent


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, signal.SIGKILL)   # stragglers of the group
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class FakeS3:
    """moto_server: a fake of AWS S3 (say so wherever it is used)."""

    def __init__(self, bucket: str = "multifair-test"):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_http(self.endpoint + "/moto-api/", 30, self.proc)
        self.bucket = bucket
        self.client().create_bucket(Bucket=bucket)

    @property
    def env(self) -> dict:
        """What every node, driver and the MLflow server need to reach the fake."""
        return {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def uri(self, prefix: str) -> str:
        """A storage path for Ray Tune (pyarrow options in the query)."""
        return (f"s3://{self.bucket}/{prefix}?endpoint_override=127.0.0.1:{self.port}"
                f"&scheme=http&region=us-east-1")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="fake", aws_secret_access_key="fake")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def close(self) -> None:
        stop_group(self.proc, grace=3)


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True,
                          capture_output=True, text=True, **kw)


def system_package(present: bool, package: str) -> None:
    """A test that needs one of Debian's packages: skipped, with the reason, where it is absent
    on a developer's machine; a failure under CI (.ci/run installs it and sets MULTIFAIR_CI=1),
    so CI never passes by skipping it."""
    import pytest

    if present:
        return
    message = f"needs Debian's {package} (apt-get install -y {package}; .ci/run installs it)"
    if os.environ.get("MULTIFAIR_CI"):
        pytest.fail(f"{message}: absent under CI")
    pytest.skip(message)


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    system_package(bool(found), "postgresql")
    return found[-1].parent


class Postgres:
    """A throw-away PostgreSQL cluster in `root` (owned by the postgres user), 127.0.0.1 only."""

    def __init__(self, root: Path, password: str):
        self.dir, self.port, self.password = Path(root) / "pg", free_port(), password
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres", "postgres")
        pwfile = self.dir.parent / "pgpw"
        pwfile.write_text(password)
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(self.dir.parent, 0o755)
        b = pg_bin()
        _as_postgres([str(b / "initdb"), "-D", str(self.dir), "-U", "postgres", "--pwfile", str(pwfile),
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"])
        pwfile.unlink()
        _as_postgres([str(b / "pg_ctl"), "-D", str(self.dir), "-w", "-l", str(self.dir / "log"), "-o",
                      f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])

    def create_db(self, name: str) -> str:
        _as_postgres([str(pg_bin() / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
                      "-c", f"CREATE DATABASE {name}"])
        return f"postgresql+psycopg2://postgres:{self.password}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            _as_postgres([str(pg_bin() / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop"])
        except subprocess.CalledProcessError:
            pid_file = self.dir / "postmaster.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


class MLflowServer:
    """mlflow/serve.sh with the given environment (see mlflow/README.md for the variables)."""

    def __init__(self, root: Path, env: dict, timeout: float = 120, port: int | None = None):
        self.port = port or free_port()   # a restart after kill() passes the old port
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_PORT": str(self.port),
                "MLFLOW_HOST": "127.0.0.1", "MLFLOW_WORKERS": "1",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **env}
        self.log = Path(root) / "mlflow-server.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "serve.sh")], env=full,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.url + "/health", timeout, self.proc)
        except Exception:
            self.close()
            raise RuntimeError(f"MLflow server did not start: {self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL the server's process group at once, as a crash or a lost node would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def close(self) -> None:
        stop_group(self.proc)
