"""Leave no Ray processes behind when the search driver is killed.

An embedded Ray (`--local`, or no cluster found) is started by the driver itself. Ray ties the
GCS and raylet to the driver's life, but not the agents they spawn: a SIGKILLed driver left its
`ray::DashboardAgent` and `ray::RuntimeEnvAgent` running, one pair per kill (seen with Ray
2.60). SIGKILL cannot be caught, so a small watchdog process (this file run as a script, in its
own session) records the driver's descendants every second and, once the driver is gone, kills
those that are still running. It touches nothing else: only processes that descended from this
driver, matched by pid and start time. Attached to a cluster the driver has no Ray descendants
and the watchdog does nothing but wait.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

try:   # optional: without it the driver warns and starts no watchdog
    import psutil
except ImportError:
    psutil = None

GRACE_S = 3.0   # after the driver is gone, let Ray's own shutdown go first


def reap_ray_on_exit() -> subprocess.Popen | None:
    """Start the watchdog for this process (call before ray.init)."""
    if psutil is None:   # the watchdog needs psutil; without it, warn and go on
        print("[search] psutil missing: a killed driver may leave Ray agents running", file=sys.stderr)
        return None
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def _watch(driver_pid: int, interval: float = 1.0) -> list[int]:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, float] = {}   # pid -> create_time (guards against pid reuse)
    while True:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child.create_time())
            if driver.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    time.sleep(GRACE_S)
    return kill_recorded(seen)


def kill_recorded(seen: dict[int, float]) -> list[int]:
    """SIGKILL each recorded process still running (pid -> create_time: a reused pid is not
    the same process and is left alone) and wait until they are gone; returns the pids killed."""
    killed = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                proc.kill()
                killed.append(proc)
        except psutil.Error:
            pass
    psutil.wait_procs(killed, timeout=10)   # gone (or a zombie for its parent), not merely signalled
    return [proc.pid for proc in killed]


def record_descendants(pid: int, seen: dict[int, float]) -> dict[int, float]:
    """Add every running descendant of `pid` to `seen` (pid -> start time); returns `seen`."""
    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass
    except psutil.NoSuchProcess:
        pass
    return seen


def alive_recorded(seen: dict[int, float]) -> list[int]:
    """The recorded processes still running (same pid and start time, not a zombie)."""
    left = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.Error:
            pass
    return left


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
