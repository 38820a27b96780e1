"""Concurrency from what the cluster can become (search/run/cluster_size.py).

Unit level: the slot arithmetic of an autoscaling config, of Ray's ClusterConfig, and the
decision (with its refusals), against hand-worked counts.

End to end (slow): Ray's own autoscaler with its fake multi-node provider on this host
(tests/search/autoscaler.py: a FAKE of a cloud; nodes are local raylets, `GPU: 1` a label, trials
train on CPU) starts with zero GPU workers; a search with `--gpus-per-trial 1` attached to it
sizes itself from the autoscaler's maximum (2 nodes), asks for both nodes up front, runs trials at
once on two autoscaled nodes, and the nodes go away once the search has released its request.
The study lives on moto's S3 server (a FAKE of AWS S3), as on a real multi-node cluster.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from search.run.cluster_size import (UNLIMITED, Capacity, NoRoomForTrial, bundle, ceiling_from_cluster_config,
                                 ceiling_from_config, decide, fits)
from tests.search.conftest import REPO, study_runs

GPU_TRIAL = bundle(1, 1)


def aws_like(max_workers=4, worker=None, head=None, types=None) -> dict:
    """The shape of cluster/aws-gpu.yaml once `ray up` has filled the resources in."""
    nodes = {"head": {"resources": head or {"CPU": 8}},
             "gpu_worker": {"resources": {"CPU": 4, "GPU": 1} if worker is None else worker, "min_workers": 0,
                            "max_workers": 4}}
    nodes.update(types or {})
    return {"max_workers": max_workers, "head_node_type": "head", "available_node_types": nodes}


def test_fits_packs_per_node():
    assert fits({"CPU": 8, "GPU": 1}, bundle(1, 1)) == 1          # the GPU is the limit
    assert fits({"CPU": 8, "GPU": 1}, bundle(1, 0.5)) == 2        # fractional GPUs
    assert fits({"CPU": 8, "GPU": 1}, bundle(1, 1 / 3)) == 3      # 1/(1/3) is 2.9999...
    assert fits({"CPU": 8}, bundle(1, 1)) == 0                    # no GPU on the node
    assert fits({"CPU": 8}, bundle(3, 0)) == 2


def test_ceiling_from_autoscaling_config_hand_counts():
    # 4 GPU workers of 1 GPU each; the CPU-only head holds no GPU trial
    assert ceiling_from_config(aws_like(), bundle(1, 1)) == 4
    assert ceiling_from_config(aws_like(), bundle(1, 0.5)) == 8
    # CPU trials: the head's 8 CPUs + 4 workers x 4 CPUs
    assert ceiling_from_config(aws_like(), bundle(2, 0)) == 4 + 4 * 2
    # a trial bigger than any node: nothing, whatever the node counts
    assert ceiling_from_config(aws_like(), bundle(8, 1)) == 0
    # the cluster-wide max_workers (3) is spent on the type holding most trials per node first:
    # 2 nodes of 8 GPUs (the type's own max) then 1 node of 1 GPU = 17
    mixed = aws_like(max_workers=3, types={"big": {"resources": {"CPU": 96, "GPU": 8}, "max_workers": 2}})
    assert ceiling_from_config(mixed, bundle(1, 1)) == 2 * 8 + 1
    # a worker type whose resources the file does not give (AWS before `ray up` fills them in)
    assert ceiling_from_config(aws_like(worker={}), bundle(1, 1)) is None
    assert ceiling_from_config({"max_workers": 2}, bundle(1, 1)) is None


def test_ceiling_from_ray_cluster_config():
    from ray.core.generated.autoscaler_pb2 import ClusterConfig, NodeGroupConfig

    config = ClusterConfig(node_group_configs=[
        NodeGroupConfig(name="head", resources={"CPU": 8}, min_count=1, max_count=1),
        NodeGroupConfig(name="gpu", resources={"CPU": 12, "GPU": 4}, min_count=0, max_count=3)])
    assert ceiling_from_cluster_config(config, bundle(1, 1)) == 12
    assert ceiling_from_cluster_config(config, bundle(4, 1)) == 3 * 3        # CPUs limit: 12 // 4
    config.max_resources["GPU"] = 5                                          # a cluster-wide cap
    assert ceiling_from_cluster_config(config, bundle(1, 1)) == 5
    config.node_group_configs[1].max_count = -1
    assert ceiling_from_cluster_config(config, bundle(1, 1)) == 5            # unlimited, capped
    del config.max_resources["GPU"]
    assert ceiling_from_cluster_config(config, bundle(1, 1)) == UNLIMITED
    assert ceiling_from_cluster_config(None, bundle(1, 1)) is None


def test_decide_from_the_autoscalers_maximum_not_the_nodes_present():
    zero_gpu = Capacity(present=0, ceiling=8, autoscaler=True, source="cfg")
    assert decide(zero_gpu, GPU_TRIAL, wanted=100)[0] == 8     # 8 GPUs at most, none yet
    assert decide(zero_gpu, GPU_TRIAL, wanted=3)[0] == 3       # never more than the trials
    assert decide(zero_gpu, GPU_TRIAL, wanted=100, requested=5) == (5, "--max-concurrent")
    grown = Capacity(present=10, ceiling=8, autoscaler=True, source="cfg")   # nodes joined by hand
    assert decide(grown, GPU_TRIAL, wanted=100)[0] == 10
    unlimited = Capacity(present=0, ceiling=UNLIMITED, autoscaler=True, source="cfg")
    assert decide(unlimited, GPU_TRIAL, wanted=100)[0] == 100
    plain = Capacity(present=2, ceiling=None, autoscaler=False, source="")
    assert decide(plain, GPU_TRIAL, wanted=100) == (2, "the 2 trial(s) the present nodes hold")
    unknown = Capacity(present=2, ceiling=None, autoscaler=True, source="")
    n, why = decide(unknown, GPU_TRIAL, wanted=100)
    assert n == 2 and "--max-concurrent" in why


@pytest.mark.parametrize("cap, requested, says", [
    # embedded Ray without a GPU: never, whatever --max-concurrent says
    (Capacity(0, None, False, "", embedded=True, nodes="CPU 2, GPU 0"), 0, "--gpus-per-trial 0"),
    (Capacity(0, None, False, "", embedded=True, nodes="CPU 2, GPU 0"), 4, "--gpus-per-trial 0"),
    # attached, no GPU node, no autoscaler that could add one
    (Capacity(0, None, False, "", nodes="2 nodes of CPU 1, GPU 0"), 0, "no autoscaler"),
    # an autoscaler none of whose node types fits a trial
    (Capacity(0, 0, True, "cfg.yaml"), 0, "no node type of the autoscaler (cfg.yaml)"),
    # an autoscaler whose maximum cannot be read, nothing present: ask for the number
    (Capacity(0, None, True, ""), 0, "pass --max-concurrent N"),
])
def test_decide_refuses_in_one_line(cap, requested, says):
    with pytest.raises(NoRoomForTrial) as err:
        decide(cap, GPU_TRIAL, wanted=10, requested=requested)
    message = str(err.value)
    assert says in message and "\n" not in message and message.startswith("--cpus-per-trial 1 --gpus-per-trial 1")


def test_decide_takes_max_concurrent_when_the_maximum_is_unknown():
    assert decide(Capacity(0, None, True, ""), GPU_TRIAL, wanted=10, requested=4) == (4, "--max-concurrent")


# -- end to end on the fake autoscaler --------------------------------------------------------
SAMPLES, EPOCHS, MAX_NODES = 3, 2, 2


@pytest.fixture
def fake_s3():
    from tests.search.servers import FakeS3

    s3 = FakeS3()
    yield s3
    s3.close()


@pytest.mark.slow
def test_autoscaling_search_scales_up_from_zero_gpus_runs_trials_at_once_and_scales_down(
        fake_s3, cache_dir, data_root, tmp_path):
    from tests.search.autoscaler import FakeAutoscalingCluster

    started = time.time()
    db = "sqlite:///" + str(tmp_path / "mlflow.db")
    args = ["--data-root", data_root, "--preset", "tiny", "--num-samples", str(SAMPLES),
            "--max-epochs", str(EPOCHS), "--grace-period", str(EPOCHS), "--gpus-per-trial", "1",
            "--cpus-per-trial", "1", "--storage-path", fake_s3.uri("studies"), "--tracking-uri", db,
            "--no-final-test", "--finalists", "0", "--no-figures", "--name", "autoscaled",
            "--checkpoint-every", "0"]
    cluster = FakeAutoscalingCluster(max_workers=MAX_NODES, worker={"CPU": 1, "GPU": 1},
                                     idle_minutes=0.1, env=fake_s3.env)
    try:
        assert cluster.resources().get("GPU", 0) == 0, "the cluster must start with no GPU worker"
        up = time.time()
        with open(tmp_path / "driver.log", "w") as log:
            proc = subprocess.Popen([sys.executable, str(REPO / "search" / "fairvision_gender.py"), *args],
                                    env=cluster.driver_env(), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=tmp_path)
            try:
                proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        driver_s = time.time() - up
        out = (tmp_path / "driver.log").read_text()
        assert proc.returncode == 0, out[-4000:]
        # sized from the autoscaler's config (its monitor runs on this host), not from 0 GPUs
        assert f"[search] {MAX_NODES} trial(s) at once: the autoscaler's largest cluster holds " \
               f"{MAX_NODES} trial(s) ({cluster.config_path})" in out, out[-4000:]

        client, parents, children = study_runs(db)
        assert len(children) == SAMPLES and all(c.info.status == "FINISHED" for c in children)
        for c in children:
            steps = [m.step for m in client.get_metric_history(c.info.run_id, "es_auc")]
            assert sorted(steps) == list(range(1, EPOCHS + 1))
        nodes = {c.data.tags["ray_node_id"] for c in children}
        assert len(nodes) >= 2, f"trials ran on {len(nodes)} node(s)"
        # two trials on different nodes whose runs (start: resources granted; end: done) overlap
        spans = [(c.info.start_time, c.info.end_time, c.data.tags["ray_node_id"]) for c in children]
        overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                       if a[2] != b[2] and a[0] < b[1] and b[0] < a[1]]
        assert overlapping, f"no two trials ran at once on different nodes: {spans}"

        # the request was released and the idle nodes go (idle timeout 6 s)
        gone = time.time()
        left = cluster.wait_resources(lambda r: r.get("GPU", 0) == 0, timeout=180)
        assert left.get("GPU", 0) == 0, f"GPU nodes still up 180 s after the search: {left}"
        overlap_s = max(min(a[1], b[1]) - max(a[0], b[0]) for a, b in overlapping) / 1000
        print(f"\nautoscaling: {len(nodes)} autoscaled nodes used, {len(overlapping)} overlapping "
              f"trial pair(s) (longest {overlap_s:.1f} s), driver {driver_s:.0f} s, scale-down "
              f"{time.time() - gone:.0f} s, test {time.time() - started:.0f} s")
    finally:
        cluster.close()
    assert cluster.alive() == [], "Ray processes left behind"
