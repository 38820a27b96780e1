"""Model work after (and before) the search runs on the cluster, not on the head.

The final test, the paired test, the registered model's signature and the constrained
objective's reference fit each run as ONE Ray task with a trial's resources (`--cpus-per-trial`,
`--gpus-per-trial`: a GPU where trials have one). The task reads the checkpoint from the study's
storage (a Tune Checkpoint, s3:// included) and the data through the trials' own path
(`search.run.trainable.datasets_for`: a prepared dataset's shards are pulled by the task's node), so
the head needs neither the data nor the cache, and scores in bf16 on a GPU instead of float32 on
its CPU (docs/scaling.md). Only aggregates come back: metrics, intervals, a signature's schema;
never a prediction per patient (the paired bootstrap runs inside the task).

Scheduling with the autoscaler: a stage's request (search.run.cluster_size.reserved) is withdrawn
when the stage ends, and an idle node goes after the autoscaler's idle timeout; `run` asks for
one trial's resources again while its task runs, so the task finds (or gets) a node whatever the
idle timeout. `reserve=False` where a standing request already covers it (the reference fit runs
under the search's request, made when the study is prepared).

`--local` on CPUs (`in_driver`): the embedded Ray's one node is this machine, the data and
the cache are here, and the driver has torch and the trainer loaded; a task there would start a
worker process and import them again (4.7 s of the 6.8 s closing stage of a 12-trial tiny search,
measured by benchmarks/search_vs_optuna.py). The body runs in the driver's process instead, with
no trial running beside it (before the search or after a stage). With a GPU it stays a task: the
driver must not hold a CUDA context the trials need.
"""
from __future__ import annotations

import os
import time

import ray

from search.run.cluster_size import reserved
from search.run.embedded_ray import is_embedded
from search.run.trainable import datasets_for, match_threads_to_cpus

ran: list[dict] = []   # this driver's tasks: what, node id, worker pid, seconds (tests, logs)


def data_of(setup: dict | None) -> dict:
    """What a task needs to find the search's data on its node (setup's synthetic spec and the
    prepared manifest), nothing else of the setup."""
    setup = setup or {}
    return {"synthetic": setup.get("synthetic"), "prepared": setup.get("prepared")}


def datasets(cfg, data: dict | None) -> dict:
    """The splits of cfg's data on this node, through the trials' path (in a task)."""
    data = data or {}
    return datasets_for(cfg, data.get("synthetic"), data.get("prepared"))


def _call(fn, args, kwargs):
    """The task's body: torch threads = the task's CPUs (as a trial's), then fn."""
    match_threads_to_cpus()
    return ray.get_runtime_context().get_node_id(), os.getpid(), fn(*args, **kwargs)


def in_driver(scfg) -> bool:
    """Whether model work runs in this process rather than as a task (see the module docstring)."""
    return bool(getattr(scfg, "local", False)) and not getattr(scfg, "gpus_per_trial", 0) and is_embedded()


def run(scfg, what: str, fn, *args, reserve: bool = True, **kwargs):
    """fn(*args, **kwargs) as a Ray task with one trial's resources (in this process with
    `in_driver`); its (small) result."""
    if in_driver(scfg):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - started
        ran.append({"what": what, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                    "s": seconds})
        print(f"[remote] {what}: done in the driver's process (--local, CPU) in {seconds:.1f} s", flush=True)
        return result
    task = ray.remote(_call).options(num_cpus=scfg.cpus_per_trial, num_gpus=scfg.gpus_per_trial,
                                     max_retries=2,   # a lost node: the task runs again elsewhere
                                     name=f"multifair-{what.replace(' ', '-')}")
    started = time.perf_counter()
    print(f"[remote] {what}: a task with {scfg.cpus_per_trial:g} CPU, {scfg.gpus_per_trial:g} GPU",
          flush=True)
    if reserve:
        with reserved(scfg, 1):
            node, pid, result = ray.get(task.remote(fn, args, kwargs))
    else:
        node, pid, result = ray.get(task.remote(fn, args, kwargs))
    seconds = time.perf_counter() - started
    ran.append({"what": what, "node_id": node, "pid": pid, "s": seconds})
    print(f"[remote] {what}: done on node {node} in {seconds:.1f} s", flush=True)
    return result
