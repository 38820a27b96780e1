"""How many trials run at once: sized from what the cluster can BECOME, not what it is at start.

An autoscaling cluster starts small (the shipped AWS file: a CPU-only head, 0 GPU workers), so
`ray.cluster_resources()` at start holds no trial and a concurrency computed from it is 1: the
autoscaler then only ever sees one pending trial and starts one node (3-5 hours instead of
23-34 minutes for the README's search; docs/scaling.md). Here concurrency comes from:

1. `--max-concurrent N`, when given (after the check below);
2. the autoscaler's largest cluster, read from its config: the cluster config Ray keeps in its
   GCS (`ray._private.state.state.get_cluster_config()`, the call Ray Train and Ray Data size
   themselves with; filled where the platform reports it) or else the config file of the
   autoscaler monitor running on this host (`ray up` starts it on the head with
   `--autoscaling-config=~/ray_bootstrap_config.yaml`, and `ray submit` / Jobs run the driver
   there). Node types are packed per node: a trial must fit on one node;
3. the nodes present now.

A trial that no present node can hold and no autoscaler could add a node for would sit PENDING
forever (Ray repeating "No available node types can fulfill resource request"): that is refused
in one line before any trial starts. `reserved()` then asks the autoscaler for every slot up
front (`ray.autoscaler.sdk.request_resources`) instead of letting it discover one pending trial
at a time, and releases the request when the stage ends (it persists otherwise).
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray.autoscaler.sdk import request_resources

from search.run.embedded_ray import is_embedded

UNLIMITED = sys.maxsize


class NoRoomForTrial(ValueError):
    """No node can hold one trial and none can be added: one line, the flags to change."""


@dataclass(frozen=True)
class Capacity:
    """Trial slots of one shape on the running cluster."""
    present: int                 # on the nodes alive now
    ceiling: int | None          # at the autoscaler's largest cluster; None: no autoscaler config read
    autoscaler: bool             # an autoscaler runs (its config may still be unreadable here)
    source: str                  # where `ceiling` came from, for the log line
    embedded: bool = False       # a one-machine Ray this driver started (--local)
    nodes: str = ""              # the present nodes' CPU/GPU, for the messages
    gpus: float = 0              # GPUs present


def bundle(cpus: float, gpus: float) -> dict:
    """One trial's resources as Ray names them."""
    return {"CPU": cpus, "GPU": gpus} if gpus > 0 else {"CPU": cpus}


def fits(resources: dict, shape: dict) -> int:
    """How many trials of `shape` one node of `resources` holds (0 if any resource is short)."""
    n = UNLIMITED
    for key, need in shape.items():
        if need > 0:
            n = min(n, int(math.floor(float(resources.get(key, 0)) / need + 1e-9)))
    return n


def ceiling_from_config(config: dict, shape: dict) -> int | None:
    """Trial slots of an autoscaling config (ray-schema.json) at its largest: the head plus every
    worker type at its max_workers, the cluster-wide max_workers spent on the types that hold
    the most trials per node. None when a worker type's resources are not in the file (AWS
    fills `resources: {}` in from the instance type when `ray up` writes the head's copy)."""
    types = config.get("available_node_types") or {}
    if not types:
        return None
    head = config.get("head_node_type")
    budget = config.get("max_workers", UNLIMITED)
    slots = fits(types[head].get("resources") or {}, shape) if head in types else 0
    per_type = []
    for name, spec in types.items():
        if name == head:
            continue
        count = int(spec.get("max_workers", budget))
        if count and not spec.get("resources"):
            return None
        per_type.append((fits(spec.get("resources") or {}, shape), count))
    for per_node, count in sorted(per_type, reverse=True):
        take = min(count, budget)
        budget -= take
        slots += per_node * take if per_node else 0
    return min(slots, UNLIMITED)


def ceiling_from_cluster_config(proto, shape: dict) -> int | None:
    """The same from the GCS's ClusterConfig (node groups with max_count, -1: unlimited;
    max_resources caps the cluster)."""
    if proto is None or not proto.node_group_configs:
        return None
    slots = 0
    for group in proto.node_group_configs:
        per_node = fits(dict(group.resources), shape)
        if per_node and group.max_count == -1:
            slots = UNLIMITED
            break
        slots += per_node * max(group.max_count, 0)
    cap = fits({k: v for k, v in proto.max_resources.items()}, {k: v for k, v in shape.items()
                                                                 if k in proto.max_resources})
    return min(slots, cap)


FLAGS = {"CPU": "--cpus-per-trial", "GPU": "--gpus-per-trial"}


def decide(cap: Capacity, shape: dict, wanted: int, requested: int = 0) -> tuple[int, str]:
    """(trials at once, why) for `wanted` trials of `shape`; `requested` is --max-concurrent (0:
    none). Raises NoRoomForTrial when no trial could ever start."""
    asked = " ".join(f"{FLAGS[k]} {v:g}" for k, v in shape.items() if k in FLAGS)
    if cap.present == 0 and not cap.autoscaler:
        if cap.embedded:
            fix = ("pass --gpus-per-trial 0 to train on this machine's CPU, or run on a cluster with GPUs"
                   if "GPU" in shape and cap.gpus == 0 else "lower them (or raise --num-cpus / --num-gpus)")
            raise NoRoomForTrial(f"{asked}: this machine's embedded Ray has {cap.nodes or 'nothing'}, "
                                 f"which cannot hold one trial: {fix}")
        raise NoRoomForTrial(f"{asked}: no node of this Ray cluster ({cap.nodes or 'none'}) can hold one "
                             "trial and no autoscaler runs that could add one: lower them or add such nodes")
    if requested > 0:
        return requested, "--max-concurrent"
    if cap.ceiling is not None:
        slots = max(cap.present, cap.ceiling)
        if slots == 0:
            raise NoRoomForTrial(f"{asked}: no node type of the autoscaler ({cap.source}) can hold one "
                                 "trial, even at its largest: lower them or add a node type that fits")
        return min(slots, wanted), f"the autoscaler's largest cluster holds {_count(slots)} ({cap.source})"
    if cap.present == 0:
        raise NoRoomForTrial(f"{asked}: no node holds one trial yet and this cluster's autoscaler does "
                             "not say how large it can grow: pass --max-concurrent N (the trials the full "
                             "cluster runs at once)")
    why = f"the {_count(cap.present)} the present nodes hold"
    if cap.autoscaler:
        why += " (an autoscaler runs but its maximum could not be read: pass --max-concurrent N to use more)"
    return min(cap.present, wanted), why


def _count(slots: int) -> str:
    return "an unlimited number" if slots >= UNLIMITED else f"{slots} trial(s)"


# -- reading the running cluster ------------------------------------------------------------
def read_capacity(shape: dict) -> Capacity:
    """Capacity of the Ray this driver is attached to (ray.init done)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    present = sum(fits(n.get("Resources", {}), shape) for n in nodes)
    shapes = Counter(f"CPU {n['Resources'].get('CPU', 0):g}, GPU {n['Resources'].get('GPU', 0):g}"
                     for n in nodes)
    summary = "; ".join(f"{k}" if c == 1 else f"{c} nodes of {k}" for k, c in sorted(shapes.items()))
    gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)
    if is_embedded():
        return Capacity(present, None, False, "", embedded=True, nodes=summary, gpus=gpus)
    gcs = ray.get_runtime_context().gcs_address
    ceiling, source = None, ""
    with contextlib.suppress(Exception):   # not every Ray build or platform has it (nor the imports below)
        from ray._private.state import state   # not `import ray....`: ray would become a local name

        ceiling = ceiling_from_cluster_config(state.get_cluster_config(), shape)
        source = "Ray's cluster config" if ceiling is not None else ""
    if ceiling is None:
        path, config = monitor_config(gcs)
        if config is not None:
            ceiling, source = ceiling_from_config(config, shape), str(path)
    running = ceiling is not None or autoscaler_running(gcs)
    return Capacity(present, ceiling, running, source, nodes=summary, gpus=gpus)


def autoscaler_running(gcs_address: str) -> bool:
    """Whether an autoscaler that can add nodes serves this cluster. Every `ray start --head`
    runs a monitor that writes its status to the GCS; without an autoscaling config it is
    read-only (it names each node's type after the node itself: `node_<id>`) and adds nothing.
    The v2 autoscaler reports an autoscaling state instead."""
    with contextlib.suppress(Exception):
        from ray._private import ray_constants
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.experimental.internal_kv import _internal_kv_get

        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if status:
            types = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
            return any(kind != format_readonly_node_type(node) for node, kind in types.items())
    with contextlib.suppress(Exception):
        from ray.autoscaler.v2.sdk import get_cluster_status

        return get_cluster_status(gcs_address, timeout=5).stats.autoscaler_version not in ("", "0", None)
    return False


def monitor_config(gcs_address: str) -> tuple[Path | None, dict | None]:
    """The autoscaling config file of this cluster's autoscaler monitor if it runs on this host
    (the head): found by its command line (`monitor.py --gcs-address=<this cluster>
    --autoscaling-config=PATH`)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith("monitor.py") for a in args) or f"--gcs-address={gcs_address}" not in args:
            continue
        given = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
        if not given:
            return None, None
        path = Path(os.path.expanduser(given))
        with contextlib.suppress(OSError):
            path = path if path.is_absolute() else Path(os.readlink(proc / "cwd")) / path
            return path, yaml.safe_load(path.read_text())
        return path, None
    return None, None


# -- the two stages' entry points -----------------------------------------------------------
def trial_concurrency(scfg, wanted: int, label: str = "search") -> int:
    """Trials of `scfg`'s shape to run at once out of `wanted` (search and confirmation)."""
    shape = bundle(scfg.cpus_per_trial, scfg.gpus_per_trial)
    n, why = decide(read_capacity(shape), shape, wanted, scfg.max_concurrent)
    print(f"[{label}] {n} trial(s) at once: {why}", flush=True)
    return n


def check_room(scfg) -> int:
    """The search's trials at once, silently; raises NoRoomForTrial for a search none of whose
    trials could ever start."""
    shape = bundle(scfg.cpus_per_trial, scfg.gpus_per_trial)
    return decide(read_capacity(shape), shape, scfg.num_samples, scfg.max_concurrent)[0]


_atexit = []


def request(scfg, slots: int) -> None:
    """Ask the autoscaler for `slots` trials' resources now (it starts their nodes at once,
    bypassing its upscaling_speed), until `release()`, a new request, or this driver's exit (an
    atexit hook; a SIGKILLed driver leaves the request standing until the next search or
    `ray.autoscaler.sdk.request_resources(bundles=[])`). A no-op on an embedded Ray."""
    if is_embedded() or slots <= 0:
        return
    request_resources(bundles=[bundle(scfg.cpus_per_trial, scfg.gpus_per_trial)] * slots)
    if not _atexit:
        _atexit.append(atexit.register(release))


def release() -> None:
    """Withdraw the request (the request persists in the GCS otherwise: idle nodes would stay)."""
    if _atexit and ray.is_initialized():
        with contextlib.suppress(Exception):   # Ray already gone: nothing left to release
            request_resources(bundles=[])


@contextlib.contextmanager
def reserved(scfg, slots: int):
    """`request` for the length of a stage (the search, the confirmation), released at its end,
    also on errors and Ctrl-C."""
    request(scfg, slots)
    try:
        yield
    finally:
        release()
