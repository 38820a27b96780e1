"""An autoscaling Ray cluster on this one host, for tests: Ray's own autoscaler with its fake
multi-node provider (`ray.autoscaler._private.fake_multi_node`), which launches real raylets on
this machine when work is pending and removes them when idle (shared/docs/stack.md, "An
autoscaling cluster on one host"). The provider is a FAKE of a cloud: "nodes" are local raylet
processes and a worker type's `GPU: 1` is only a resource label (no CUDA: trials train on CPU).

The head is `ray start --head --autoscaling-config=...` with 0 CPUs, run under `setsid` with
RAY_FAKE_CLUSTER=1, every socket on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), a private
RAY_TMPDIR and a private token file. Stopping is by process: every descendant of the head's
session (gcs_server, raylet, the autoscaler monitor and the raylets it started, their agents) is
recorded with psutil while the cluster runs and SIGKILLed at the end: only this cluster's
processes. Not Ray's stop command nor `ray.cluster_utils.AutoscalingCluster` (which calls that
command): both stop every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.search.multinode import free_port, node_env

BIN = Path(sys.executable).parent


def autoscaling_config(gcs_port: int, max_workers: int, worker: dict, idle_minutes: float) -> dict:
    """Ray cluster config (ray/autoscaler/ray-schema.json) for the fake provider: a 0-CPU head
    and one worker type `gpu_worker` with `worker` resources, 0 to `max_workers` of them."""
    return {
        "cluster_name": "fake-autoscaling",
        "max_workers": max_workers,
        "idle_timeout_minutes": idle_minutes,
        "upscaling_speed": 10.0,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}",
                     # without these two every node ends "launch failed" (stack.md)
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     # every fake node has the address 127.0.0.1: without this the autoscaler
                     # cannot tell them apart and never finds one idle (nodes never go away)
                     "use_node_id_as_ip": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": dict(worker), "node_config": {}, "min_workers": 0,
                           "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class FakeAutoscalingCluster:
    """`FakeAutoscalingCluster(max_workers=3, worker={"CPU": 1, "GPU": 1})`; drivers attach
    with `driver_env()` (RAY_ADDRESS = the head's GCS address, token auth)."""

    def __init__(self, max_workers: int = 3, worker: dict | None = None, idle_minutes: float = 0.1,
                 env: dict | None = None, timeout: float = 90):
        # short and private: Ray's socket paths must stay under 107 bytes
        self.tmpdir = Path(tempfile.mkdtemp(prefix="mf-as-", dir="/tmp"))
        self.token_path = self.tmpdir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config_path = self.tmpdir / "autoscaling.json"
        self.config_path.write_text(json.dumps(autoscaling_config(
            self.port, max_workers, worker or {"CPU": 1, "GPU": 1}, idle_minutes)))
        self.env = node_env(self.tmpdir, {"RAY_AUTH_MODE": "token",
                                          "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                                          "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                                          **(env or {})})
        self._seen: dict[int, float] = {}
        self.log = open(self.tmpdir / "head.log", "wb")
        # --block: `ray start` stays in the foreground as the parent of every head process, so
        # the whole cluster is this one session's descendants
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--autoscaling-config={self.config_path}",
             "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
             "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}",
             f"--temp-dir={self.tmpdir / 'ray'}"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_up(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_up(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.head_log()[-3000:]}")
            self.track()
            if any("monitor.py" in " ".join(self._cmdline(pid)) for pid in self._seen):
                try:
                    self.resources()
                    return
                except Exception:
                    pass
            time.sleep(1)
        raise TimeoutError(f"the autoscaling head did not come up in {timeout} s: {self.head_log()[-3000:]}")

    @staticmethod
    def _cmdline(pid: int) -> list[str]:
        import psutil

        try:
            return psutil.Process(pid).cmdline()
        except psutil.Error:
            return []

    def head_log(self) -> str:
        return (self.tmpdir / "head.log").read_text(errors="replace")

    def driver_env(self, extra: dict | None = None) -> dict:
        return {**self.env, "RAY_ADDRESS": self.address, **(extra or {})}

    def track(self) -> dict[int, float]:
        """Record every process descending from `ray start` (pid -> start time): the monitor's
        raylets and their agents included."""
        from search.run.reaper import record_descendants

        return record_descendants(self.proc.pid, self._seen)

    def resources(self) -> dict:
        """Total resources of the alive nodes, asked of the GCS from a separate process (this
        test process must not become a Ray client of a second cluster)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print('RESOURCES', json.dumps(ray.cluster_resources()), flush=True)" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.driver_env(), capture_output=True,
                             text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        # the one line of ours among Ray's event lines
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESOURCES "))
        return json.loads(line.removeprefix("RESOURCES "))

    def wait_resources(self, predicate, timeout: float, interval: float = 3) -> dict:
        deadline = time.time() + timeout
        while True:
            res = self.resources()
            self.track()
            if predicate(res) or time.time() > deadline:
                return res
            time.sleep(interval)

    def close(self) -> list[int]:
        """SIGKILL the head's process group and every recorded descendant (matched by pid and
        start time). gcs_server and the monitor ignore SIGTERM for 20-30 s: no grace period."""
        from search.run.reaper import kill_recorded

        self.track()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        killed = kill_recorded(self._seen)
        self.log.close()
        self.kept_log = self.head_log()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return killed

    def alive(self) -> list[int]:
        from search.run.reaper import alive_recorded

        return alive_recorded(self._seen)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
