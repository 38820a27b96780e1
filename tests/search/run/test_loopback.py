"""Nothing the project starts on one machine listens beyond loopback, and nothing outlives it.

Checked from the operating system (psutil reads /proc): the sockets in LISTEN state (TCP) or
bound (UDP) of every process of an embedded search (`--local`: driver, gcs_server, raylet,
agents, trial workers), found by a marker variable each of them inherits; and of the MLflow
tracking server as mlflow/serve.sh starts it. The two end-to-end tests take about 40-60 s each
on 2 idle cores (up to 2 minutes on a loaded machine): marked slow.
"""
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import psutil
import pytest
from search.record.tracking import ui_hint
from tests.search.conftest import REPO, subprocess_env
from tests.search.record.test_tracking import free_port

MARK = "MULTIFAIR_LOOPBACK_TEST"


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped                       # ::ffff:127.0.0.1
    return addr.is_loopback


def listening(procs) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP / bound UDP socket of `procs`."""
    out = []
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == 2):   # 2: SOCK_DGRAM
                    out.append((name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue                                   # exited between listing and reading
    return out


def marked(token: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == token:
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_gone(token: str, seconds: float) -> list[psutil.Process]:
    deadline = time.time() + seconds
    while (left := marked(token)) and time.time() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
def test_embedded_search_listens_on_loopback_only_and_leaves_nothing(tmp_path):
    token = uuid.uuid4().hex
    env = {**subprocess_env(), MARK: token}
    for var in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(var, None)
    # the entry script copied alone into an empty folder, no --data-root (generated data, said
    # loudly), the default MLflow store (sqlite beside the results): it runs, and listens on
    # nothing beyond loopback (the sqlite store listens on nothing at all)
    folder = tmp_path / "alone"
    folder.mkdir()
    shutil.copy(REPO / "search" / "fairvision_gender.py", folder)
    cmd = [sys.executable, "fairvision_gender.py", "--local",
           "--preset", "tiny", "--num-samples", "2", "--max-epochs", "2",
           "--grace-period", "1", "--max-concurrent", "2", "--cpus-per-trial", "1",
           "--num-cpus", "2", "--finalists", "0", "--no-figures", "--storage-path", "results"]
    log = open(tmp_path / "search.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                            start_new_session=True)
    seen: set[tuple[str, str, int]] = set()
    try:
        while proc.poll() is None:
            seen.update(listening(marked(token)))
            time.sleep(0.2)
        rc = proc.wait()
        left = wait_gone(token, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    for p in marked(token):                            # ours by the marker: never anyone else's
        p.kill()
    output = (tmp_path / "search.log").read_text(errors="replace")
    assert rc == 0, output[-3000:]
    assert "GENERATED SYNTHETIC" in output                         # no --data-root: said loudly
    assert (folder / "results" / "mlflow.db").is_file()            # default store: sqlite there
    assert "best configuration" in output and "/#/experiments/" in output and "parent run id" in output
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, f"sampling missed Ray's servers: {sorted(seen)}"
    exposed = sorted(s for s in seen if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert not left, f"outlived the search: {[(p.pid, p.name()) for p in left]}"


@pytest.mark.slow
def test_mlflow_server_script_and_ui_hint_default_to_loopback(tmp_path):
    assert "--host 127.0.0.1" in ui_hint("sqlite:////tmp/x.db", "1")[0]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": "", "MLFLOW_WORKERS": "1",
           "MLFLOW_AUTH_ADMIN_PASSWORD": uuid.uuid4().hex,        # serve.sh has no default
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    script = ["bash", str(REPO / "mlflow" / "serve.sh"), str(tmp_path / "store"), str(port)]
    server = subprocess.Popen(script, env=env, stdout=subprocess.DEVNULL,      # no HOST argument
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow/serve.sh exited"
                time.sleep(1)
        top = psutil.Process(server.pid)
        sockets = listening([top, *top.children(recursive=True)])
        assert any(p == port for _, _, p in sockets), sockets
        assert all(is_loopback(ip) for _, ip, _ in sockets), sockets
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_is_loopback_on_the_addresses_ray_and_mlflow_print():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
