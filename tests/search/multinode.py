"""A real multi-node Ray on this one host, for tests and benchmarks.

`LocalCluster` starts a helper process (this file run as a script) that owns a
`ray.cluster_utils.Cluster`: one head raylet and worker raylets, each a separate set of Ray
processes, all bound to 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, see
shared/docs/stack.md) with a private RAY_TMPDIR, so another driver's auto-discovery never finds
it and nothing here needs the machine-wide stop command. The helper takes commands on stdin:
`remove NAME` (the node is lost: `Cluster.remove_node(allow_graceful=False)`, the cleanest node
loss) and `shutdown`. Drivers are separate processes that attach with RAY_ADDRESS.

Cleanup is by process id: every process descending from the helper is recorded while the
cluster runs and whatever of them survives `shutdown` is SIGKILLed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(tmpdir: str | Path, extra: dict | None = None) -> dict:
    """Environment for the cluster and its drivers: loopback-only Ray, private temp dir, the
    project importable, plus `extra` (e.g. AWS_* for a fake S3): raylets pass it to workers."""
    env = dict(os.environ)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=str(tmpdir),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
               RAY_USAGE_STATS_ENABLED="0", TUNE_GLOBAL_CHECKPOINT_S="1",
               TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0")
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)   # nothing inherited from the calling process picks another Ray
    env.update(extra or {})
    return env


class LocalCluster:
    """Head + named worker nodes: `LocalCluster({"head": {"num_cpus": 1}, "w1": {...}})`."""

    def __init__(self, nodes: dict[str, dict], env: dict | None = None, dashboard: bool = False,
                 timeout: float = 120):
        # short and private: Ray's socket paths must stay under 107 bytes
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp"))
        # Token authentication, as on a real cluster: a private token file, RAY_AUTH_MODE=token
        # for every node and driver started from here (never ~/.ray/auth_token, shared by others).
        self.token_path = self.tmpdir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.env = node_env(self.tmpdir, {"RAY_AUTH_MODE": "token",
                                          "RAY_AUTH_TOKEN_PATH": str(self.token_path), **(env or {})})
        spec = {"nodes": nodes, "port": free_port(), "dashboard": dashboard}
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(spec)], env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._seen: dict[int, float] = {}   # pid -> start time (a reused pid is not ours)
        try:
            info = json.loads(self._readline(timeout))
        except Exception:
            self.close()
            raise
        self.address, self.node_ids = info["address"], info["node_ids"]
        self.dashboard_url = info.get("dashboard_url")
        self.track()

    def _readline(self, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("{"):
                return line
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"cluster helper exited with {self.proc.returncode}")
        raise TimeoutError("cluster helper did not answer")

    def driver_env(self, extra: dict | None = None) -> dict:
        return {**self.env, "RAY_ADDRESS": self.address, **(extra or {})}

    def track(self) -> dict[int, float]:
        """Record every process descending from the helper (raylets, GCS, agents, workers)."""
        from search.run.reaper import record_descendants   # here: this file also runs as a script

        return record_descendants(self.proc.pid, self._seen)

    def remove(self, name: str, timeout: float = 60) -> None:
        self.track()
        self.proc.stdin.write(f"remove {name}\n")
        self.proc.stdin.flush()
        assert json.loads(self._readline(timeout)) == {"removed": name}

    def close(self) -> list[int]:
        """Shut the cluster down; SIGKILL whatever of it survives. Returns the pids killed."""
        self.track()
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("shutdown\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait()
        # SIGKILL and wait until each is gone: a killed raylet can take a moment to exit, and
        # a check straight after a bare kill saw one still running (suite run of 2026-12-07)
        from search.run.reaper import kill_recorded   # here: this file also runs as a script

        killed = kill_recorded(self._seen)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return killed

    def alive(self) -> list[int]:
        from search.run.reaper import alive_recorded

        return alive_recorded(self._seen)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(spec: dict) -> None:
    """The helper process: start the nodes, print their ids, obey stdin."""
    from ray.cluster_utils import Cluster

    nodes = dict(spec["nodes"])
    # every node's dashboard agent gets its own free port: Ray's default (52365) is taken by
    # whichever node (or other Ray on this machine) binds first, and a head whose agent lost that
    # race answers Jobs with "No available agent to submit job"
    head_args = dict(nodes.pop("head"), node_ip_address="127.0.0.1", gcs_server_port=spec["port"],
                     include_dashboard=spec["dashboard"], dashboard_agent_listen_port=free_port())
    if spec["dashboard"]:
        head_args.update(dashboard_host="127.0.0.1", dashboard_port=free_port())
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    handles = {"head": cluster.head_node}
    for name, args in nodes.items():
        if args.pop("own_temp_dir", False):   # Jobs: a node sharing the head's temp dir can
            args["temp_dir"] = os.path.join(os.environ["RAY_TMPDIR"], name)   # delete job files
        handles[name] = cluster.add_node(node_ip_address="127.0.0.1",
                                         dashboard_agent_listen_port=free_port(), **args)
    cluster.wait_for_nodes()
    info = {"address": cluster.address, "node_ids": {n: h.node_id for n, h in handles.items()}}
    if spec["dashboard"]:
        info["dashboard_url"] = "http://" + cluster.head_node.webui_url
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "remove":
            cluster.remove_node(handles.pop(args[0]), allow_graceful=False)
            print(json.dumps({"removed": args[0]}), flush=True)
        elif cmd == "shutdown":
            break
    cluster.shutdown()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
