"""An embedded (one-machine) Ray that listens on loopback only.

On Linux, `ray.init(address="local")` binds the machine's network address or every interface
(gcs_server, raylet, object manager, the driver and each worker): anyone on the same network can
reach a researcher's Ray. Ray's own single-machine mode (the one it uses on macOS and Windows)
keeps every socket on 127.0.0.1; it is switched on by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read
when ray is imported, plus a node address of 127.0.0.1 (otherwise rewritten to the LAN address).
See ../shared/docs/stack.md, "Ray on one host". A real cluster (an address, `ray submit`, Jobs,
KubeRay) never comes through here and is unchanged.

The variable is set only while Ray starts (its processes inherit it) and restored afterwards,
because `ray start --address` refuses it. ray.init also sets RAY_AUTH_MODE=token in the calling
process (token auth, kept while this Ray runs); `local_ray()` restores it at shutdown so that it
does not leak into later clients of other clusters (tests, benchmarks).
"""
from __future__ import annotations

import contextlib
import os

import ray
import ray._private.ray_constants as constants

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_VAR = "RAY_AUTH_MODE"
_started: dict = {}   # the GCS address of the Ray this process started (search/run/cluster_size.py)


@contextlib.contextmanager
def _single_machine_mode():
    saved = os.environ.get(SINGLE_MACHINE_VAR)
    saved_flag = constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_VAR] = "0"
    constants.ENABLE_RAY_CLUSTER = False      # ray may have been imported before the variable
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        _restore(SINGLE_MACHINE_VAR, saved)


def _restore(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def init_local_ray(num_cpus: int | None = None, num_gpus: int | None = None, **kwargs):
    """ray.init of a new one-machine Ray, every socket on 127.0.0.1, no dashboard."""
    kwargs.setdefault("include_dashboard", False)
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    with _single_machine_mode():
        context = ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **kwargs)
    _started["gcs"] = ray.get_runtime_context().gcs_address
    return context


def is_embedded() -> bool:
    """Whether the Ray this process is connected to is one it started here: nothing can join it
    (no autoscaler, no other machine)."""
    return ray.is_initialized() and _started.get("gcs") == ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, num_gpus: int | None = None, **kwargs):
    """`with local_ray(2): ...`: init_local_ray, then ray.shutdown and RAY_AUTH_MODE restored."""
    saved_auth = os.environ.get(AUTH_VAR)
    init_local_ray(num_cpus, num_gpus, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
        _restore(AUTH_VAR, saved_auth)
