"""The head does no model work (search/run/remote.py): the final test, the paired test, the model
signature and the constrained reference fit run as Ray tasks with a trial's resources, reading the
checkpoint from storage and the data through the trials' path on the task's node.

- On the embedded Ray: each of the four (the deployed test: paired test and robustness), run as
  a task, gives what the same function gives in
  this process (independent computation: the trainer called directly), in another process.
- On a local multi-node Ray (tests/search/multinode.py) whose head has 0 CPUs (nothing can run
  there) with the study and the data on moto's S3 server (a FAKE of AWS S3 started here), the
  raw files deleted after their upload: a search with a confirmation stage runs to the end, paired
  test and registration included; every task ran on the worker node and the driver pulled no
  image shard. Slow: about 3-5 min on 2 shared cores.
- With Ray's autoscaler (fake multi-node provider) and no GPU node left: a task with a GPU
  trial's resources gets a node started for it; the request is withdrawn after it (30 s)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATASETS, generate
from tests.search.conftest import REPO, study_runs

SIZES = tuple(DATASETS["search"][k] for k in ("n_train", "n_val", "n_test"))
from tests.search.multinode import LocalCluster
from tests.search.servers import FakeS3


def _fit_checkpoint(cfg, folder: Path):
    from ray import tune

    from trainer.loop import fit

    saved = {}
    fit(cfg, on_epoch=lambda r: saved.__setitem__("dir", r.save_checkpoint(folder, resume=False)),
        progress=False)
    return tune.Checkpoint.from_directory(str(saved["dir"]))


def _close(a, b, path=""):
    """Nested dicts of floats equal to 1e-9 (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, float):
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9, (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_the_four_run_as_tasks_and_equal_the_local_computation(ray_session, search_config, tmp_path):
    from search.run import remote
    from search.run.objectives import reference_auc
    from search.decide.registry import checkpoint_signature, signature
    from search.runner import base_config
    from search.decide.scoring import final_test, run_deployed_test

    scfg = search_config(tmp_path, max_epochs=1, objective="constrained", min_auc_drop=0.05)
    cfg = base_config(scfg)
    setup = {"synthetic": None}    # a local root: the task's node builds (here: finds) the cache
    before = len(remote.ran)

    # the constrained reference: the same seed, CPU both, one torch thread each
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = reference_auc(cfg)
    finally:
        torch.set_num_threads(threads)
    assert reference_auc(cfg, scfg, setup) == pytest.approx(here, abs=1e-9)

    base = _fit_checkpoint(cfg.replace(mode="baseline"), tmp_path / "base")
    chosen = _fit_checkpoint(cfg.replace(seed=7), tmp_path / "chosen")
    _close(final_test(chosen, None, None, scfg, setup), final_test(chosen, None, None))
    scored = run_deployed_test(base, chosen, "chosen", n=200, seed=3, scfg=scfg, setup=setup)
    _close(scored, run_deployed_test(base, chosen, "chosen", n=200, seed=3))
    paired = scored["paired"]
    assert paired["n_test"] == SIZES[2] and paired["auc"]["n_valid"] > 0
    assert not any(isinstance(v, (list, np.ndarray)) and len(v) == SIZES[2]
                   for block in scored.values() for row in block.values() if isinstance(row, dict)
                   for v in row.values()), "per-sample values came back"
    sig = remote.run(scfg, "model signature", checkpoint_signature, chosen, remote.data_of(setup))
    assert sig == signature(cfg), "the task's schema differs from the driver's"
    assert set(sig.inputs.input_names()) == set(cfg.resolved_modalities())

    tasks = remote.ran[before:]
    assert [t["what"] for t in tasks] == ["reference fit", "final test", "deployed test", "model signature"]
    assert all(t["pid"] != os.getpid() for t in tasks), "a task ran in the driver's process"

    # --local on CPUs: the same work in the driver's process (no worker started), same answer
    local = search_config(tmp_path / "local", local=True)
    assert remote.in_driver(local) and not remote.in_driver(scfg)
    assert remote.run(local, "model signature", checkpoint_signature, chosen, remote.data_of(setup)) == sig
    _close(final_test(chosen, None, None, local, setup), final_test(chosen, None, None))
    assert [t["pid"] for t in remote.ran[-2:]] == [os.getpid()] * 2


# -- a head without data ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_s3():
    s3 = FakeS3()
    yield s3
    s3.close()


@pytest.mark.slow
def test_search_to_registration_with_a_head_that_holds_no_data(fake_s3, tmp_path):
    from tests.search.run.test_dataprep import upload

    folder = generate(tmp_path / "raw", **DATASETS["search"])   # a copy of its own: deleted below
    upload(fake_s3, folder, "raw/fv")
    shutil.rmtree(folder)   # nothing on this machine's disk can be read as the data
    caches = {name: tmp_path / f"cache-{name}" for name in ("head", "w1", "driver")}
    nodes = {"head": {"num_cpus": 0, "env_vars": {"MULTIFAIR_CACHE": str(caches["head"])}},
             "w1": {"num_cpus": 2, "env_vars": {"MULTIFAIR_CACHE": str(caches["w1"])}}}
    cluster = LocalCluster(nodes, env=fake_s3.env)
    try:
        db = "sqlite:///" + str(tmp_path / "mlflow.db")
        args = ["--data-root", fake_s3.uri("raw/fv"), "--preset", "tiny", "--num-samples", "2",
                "--max-epochs", "2", "--grace-period", "2", "--cpus-per-trial", "1",
                "--storage-path", fake_s3.uri("studies"), "--tracking-uri", db, "--finalists", "1",
                "--confirm-seeds", "2", "--no-figures", "--name", "hl", "--register-name", "mf-hl",
                "--objective", "constrained", "--min-auc-drop", "0.5"]
        env = cluster.driver_env({"MULTIFAIR_CACHE": str(caches["driver"])})
        out = subprocess.run([sys.executable, str(REPO / "search" / "fairvision_gender.py"), *args],
                             env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-5000:]
        ran = dict(re.findall(r"\[remote\] (reference fit|deployed test|model signature): done on node (\w+)", log))
        assert set(ran) == {"reference fit", "deployed test", "model signature"}, log[-3000:]
        assert set(ran.values()) == {cluster.node_ids["w1"]}, (ran, cluster.node_ids)
        decision = json.loads(fake_s3.client().get_object(
            Bucket=fake_s3.bucket, Key="studies/hl/decision.json")["Body"].read())
        assert decision["test"]["n_test"] == SIZES[2] and decision["registered"]["name"] == "mf-hl"
        client, _, children = study_runs(db)
        assert {c.data.tags["ray_node_id"] for c in children} == {cluster.node_ids["w1"]}
        info = client.get_model_version("mf-hl", decision["registered"]["version"])
        assert info.tags.get("test.auc_diff") is not None
    finally:
        cluster.close()
    assert cluster.alive() == [], "Ray processes left behind"
    # the driver read meta files only (labels, codes, hashes: the dataset card), no image shard;
    # nothing ran on the head node, so nothing of it touched its cache folder
    driver = [p.name for p in caches["driver"].rglob("*.npy")]
    assert driver and not [n for n in driver if n.endswith((".slo.npy", ".oct.npy"))], driver
    assert not caches["head"].exists() or not any(caches["head"].rglob("*"))
    pulled = [p.parent.name for p in caches["w1"].rglob("prepared/*/manifest.json")]
    assert len(pulled) == 1, pulled


PROBE = """
import json, os, ray, types
from search.run import remote
ray.init()
trial = types.SimpleNamespace(cpus_per_trial=1, gpus_per_trial=1)   # a GPU trial's shape
head = ray.get_runtime_context().get_node_id()
remote.run(trial, "probe", os.getpid)
print(json.dumps({"head": head, **remote.ran[-1]}))
"""


@pytest.mark.slow
def test_a_task_after_the_stage_gets_a_gpu_node_from_the_autoscaler(tmp_path):
    """Ray's autoscaler with its fake multi-node provider (tests/search/autoscaler.py, loopback,
    stopped by pid), 0 GPU workers when the task is submitted (the search's nodes gone idle):
    the task with a trial's GPU gets a node started for it and runs there, not on the head."""
    from tests.search.autoscaler import FakeAutoscalingCluster

    cluster = FakeAutoscalingCluster(max_workers=1, worker={"CPU": 1, "GPU": 1}, idle_minutes=0.1)
    try:
        assert cluster.resources().get("GPU", 0) == 0
        out = subprocess.run([sys.executable, "-c", PROBE], env=cluster.driver_env(), capture_output=True,
                             text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        ran = json.loads(out.stdout.strip().splitlines()[-1])
        assert ran["what"] == "probe" and ran["node_id"] != ran["head"], ran
        left = cluster.wait_resources(lambda r: r.get("GPU", 0) == 0, timeout=120)
        assert left.get("GPU", 0) == 0, f"the request was not withdrawn: GPU node still up {left}"
    finally:
        cluster.close()
    assert cluster.alive() == [], "Ray processes left behind"
