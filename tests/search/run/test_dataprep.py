"""Data prepared once by the cluster (search/run/dataprep.py) from object storage: moto's server mode,
a FAKE of AWS S3 started here on 127.0.0.1, holds a generated dataset; a two-node local Ray
(tests/search/multinode.py, each node with its own cache folder, as nodes with their own disks)
runs the preparation job and a search whose trials never see a raw file: the raw folder is
deleted once uploaded. Slow: about 3-5 min for the file on 2 shared cores."""
from __future__ import annotations

import io
import json
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

pytestmark = pytest.mark.slow
PREPARED = "studies/prepared-data"   # where a search with --storage-path <studies> puts it


@pytest.fixture(scope="module")
def fake_s3():
    s3 = FakeS3()
    yield s3
    s3.close()


def upload(s3: FakeS3, folder: Path, prefix: str, replace: dict | None = None) -> None:
    client = s3.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            body = (replace or {}).get(path.name) or path.read_bytes()
            client.put_object(Bucket=s3.bucket, Key=key, Body=body)


def without_key(path: Path, key: str) -> bytes:
    with np.load(path) as z:
        kept = {k: z[k] for k in z.files if k != key}
    buf = io.BytesIO()
    np.savez_compressed(buf, **kept)
    return buf.getvalue()


@pytest.fixture(scope="module")
def raw(fake_s3, tmp_path_factory):
    """The generated dataset in S3 (raw/fv, and raw/bad with one npz lacking its label key
    'glaucoma': a missing image key is an absent modality, not a defect), the local cache
    builder's datasets of the same files, the name of the broken file. The local raw folder is
    deleted afterwards: nothing below can read it."""
    from trainer.config import make_config
    from trainer.data import audit_dataset, build_datasets
    tmp = tmp_path_factory.mktemp("dataprep")
    folder = generate(tmp / "raw", **DATASETS["search"])   # a copy of its own: deleted below
    upload(fake_s3, folder, "raw/fv")
    broken = sorted((folder / "Glaucoma" / "Validation").glob("data_*.npz"))[3]
    upload(fake_s3, folder, "raw/bad", {broken.name: without_key(broken, "glaucoma")})
    cfg = make_config("fairvision", "gender", preset="tiny", data_root=str(folder),
                      cache_dir=str(tmp / "local-cache"))
    reference, card = build_datasets(cfg), audit_dataset(cfg)["card"]
    shutil.rmtree(folder)
    return {"cfg": cfg, "reference": reference, "card": card, "broken": broken.name, "tmp": tmp}


@pytest.fixture(scope="module")
def cluster(fake_s3, raw):
    """Head and one worker, 1 CPU each, each with its own trainer cache folder."""
    caches = {name: raw["tmp"] / f"cache-{name}" for name in ("head", "w1")}
    nodes = {name: {"num_cpus": 1, "env_vars": {"MULTIFAIR_CACHE": str(path)}}
             for name, path in caches.items()}
    c = LocalCluster(nodes, env=fake_s3.env)
    c.caches = caches
    yield c
    c.close()
    assert c.alive() == [], "Ray processes left behind"


def run_job(cluster, fake_s3, source: str, out: str = PREPARED):
    cmd = [sys.executable, "-m", "search.run.dataprep", "--dataset", "fairvision", "--preset", "tiny",
           "--data-root", fake_s3.uri(source), "--out", fake_s3.uri(out)]
    return subprocess.run(cmd, env=cluster.driver_env(), capture_output=True, text=True,
                          timeout=400, cwd=REPO)


@pytest.fixture(scope="module")
def job(cluster, fake_s3):
    out = run_job(cluster, fake_s3, "raw/fv")
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


def test_job_shards_equal_the_local_cache(job, raw, fake_s3, tmp_path, monkeypatch):
    from search.run import dataprep
    from trainer.data import build_datasets

    result, log = job
    assert not result["reused"] and result["samples"] == sum(SIZES)
    assert f"(manifest {result['sha256']})" in log
    for key, value in fake_s3.env.items():   # this process reads the fake S3 too
        monkeypatch.setenv(key, value)
    local = dataprep.pull(result["uri"], tmp_path)    # every file checked against its sha256
    manifest = json.loads((local / "manifest.json").read_text())
    shard_files = [p for s in manifest["splits"].values() for sh in s["shards"] for p in sh["parts"]]
    assert len(shard_files) == sum(-(-n // 32) for n in SIZES) * 2   # slo + oct per shard
    prepared = build_datasets(raw["cfg"], prepared=local)
    for split, ref in raw["reference"].items():
        got = prepared[split]
        assert set(got.arrays) == set(ref.arrays) == {"slo", "oct"}
        for m in ref.arrays:
            a, b = np.asarray(got.arrays[m]), np.asarray(ref.arrays[m])
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (split, m)
        assert np.array_equal(got.labels, ref.labels) and np.array_equal(got.groups, ref.groups)
        assert manifest["splits"][split]["n"] == len(ref.arrays["slo"])
    assert manifest["card"] == raw["card"]   # the local audit's card of the same files


def test_second_run_reuses_the_manifest(job, cluster, fake_s3):
    before = fake_s3.keys(PREPARED)
    out = run_job(cluster, fake_s3, "raw/fv")
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads(out.stdout.strip().splitlines()[-1])
    assert again["reused"] and again["uri"] == job[0]["uri"] and again["sha256"] == job[0]["sha256"]
    assert f"data: prepared at s3://{fake_s3.bucket}/{PREPARED}/" in out.stdout
    assert f"(manifest {again['sha256']}), reused" in out.stdout
    assert fake_s3.keys(PREPARED) == before


def test_corrupt_npz_fails_the_job_naming_file_and_key(cluster, fake_s3, raw):
    out = run_job(cluster, fake_s3, "raw/bad", out="prepared-bad")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and raw["broken"] in line and "'glaucoma'" in line, line
    assert f"s3://{fake_s3.bucket}/raw/bad/Glaucoma/Validation/{raw['broken']}" in line
    assert not [k for k in fake_s3.keys("prepared-bad") if k.endswith("manifest.json")]


def test_pull_waits_on_the_node_lock_with_a_timeout_naming_it(job, fake_s3, tmp_path, monkeypatch):
    from filelock import FileLock

    from search.run import dataprep

    for key, value in fake_s3.env.items():
        monkeypatch.setenv(key, value)
    lock = tmp_path / "prepared" / f"{job[0]['sha256']}.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):   # another trial of this node is pulling
        with pytest.raises(TimeoutError, match=f"waited 1 s for the lock {lock}"):
            dataprep.pull(job[0]["uri"], tmp_path, timeout_s=1)
    assert not (tmp_path / "prepared" / job[0]["sha256"]).exists()


def test_search_with_s3_data_root_on_nodes_without_raw_files(job, cluster, fake_s3, raw, tmp_path):
    db = "sqlite:///" + str(tmp_path / "mlflow.db")
    args = ["--data-root", fake_s3.uri("raw/fv"), "--preset", "tiny", "--num-samples", "2",
            "--max-epochs", "1", "--grace-period", "1", "--max-concurrent", "2",
            "--cpus-per-trial", "1", "--storage-path", fake_s3.uri("studies"), "--tracking-uri", db,
            "--no-final-test", "--finalists", "0", "--no-figures", "--name", "dp"]
    env = cluster.driver_env({"MULTIFAIR_CACHE": str(tmp_path / "driver-cache")})
    out = subprocess.run([sys.executable, str(REPO / "search" / "fairvision_gender.py"), *args],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert f"(manifest {job[0]['sha256']}), reused" in log   # the job's output, found by its key
    _, parents, children = study_runs(db)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    nodes = {c.data.tags["ray_node_id"] for c in children}
    assert nodes == set(cluster.node_ids.values()), "trials ran on both nodes"
    for name, cache in cluster.caches.items():   # each node pulled the shards once, to its disk
        pulled = [p.parent.name for p in cache.rglob("prepared/*/manifest.json")]
        assert pulled == [job[0]["sha256"]], (name, pulled)
        assert not list(cache.rglob("*.tmp")), name
    study = json.loads(fake_s3.client().get_object(Bucket=fake_s3.bucket,
                                                   Key="studies/dp/study.json")["Body"].read())
    assert study["setup"]["prepared"]["sha256"] == job[0]["sha256"]
    # the driver read the meta files only (labels, codes, hashes: the card), no image shard
    driver = [p.name for p in (tmp_path / "driver-cache").rglob("*.npy")]
    assert driver and not [n for n in driver if n.endswith((".slo.npy", ".oct.npy"))], driver


def test_unreachable_data_root_is_one_line(monkeypatch):
    from search.run import dataprep
    from trainer.data import LAYOUTS
    from trainer.data.common import DataError
    from tests.search.multinode import free_port

    for key, value in {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    root = f"s3://nobucket/fv?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
    with pytest.raises(DataError, match=r"^data root s3://nobucket/fv: cannot list it "
                                        r"\(key: data_root\): [^\n]*$"):
        dataprep.list_raw(root, LAYOUTS["fairvision"])


@pytest.mark.parametrize("layout", ["fairvision", "fairvlmed"])
def test_local_root_job_on_the_embedded_ray_equals_the_cache(ray_session, data_root, dataset, tmp_path,
                                                            layout):
    """--prepare-on-cluster's path: a local root (every node sees it), output to a local
    folder; the shards are the cache's arrays (FairVLMed: SLO and tokenised notes) and a second
    run reuses them."""
    from search.run import dataprep
    from trainer.config import make_config
    from trainer.data import build_datasets
    if layout == "fairvlmed":
        data_root = str(dataset("vl_fit"))      # tests/conftest.py: read, never changed
    cfg = make_config(layout, "gender", preset="tiny", data_root=data_root,
                      cache_dir=str(tmp_path / "cache"))
    lines = []
    job = dataprep.prepare_on_cluster(cfg, str(tmp_path / "out"), log=lambda s, **_: lines.append(s),
                                      shard_samples=40)
    again = dataprep.prepare_on_cluster(cfg, str(tmp_path / "out"), log=lambda s, **_: lines.append(s))
    assert not job["reused"] and job["task_cpu_s"] > 0
    assert not again["reused"], "another shard size is another key"
    third = dataprep.prepare_on_cluster(cfg, str(tmp_path / "out"), log=lambda s, **_: lines.append(s))
    assert third["reused"] and third["sha256"] == again["sha256"] and lines[-1].endswith(", reused")
    for result in (job, again):
        local = dataprep.pull(result["uri"], tmp_path / "node")
        prepared, cached = build_datasets(cfg, prepared=local), build_datasets(cfg)
        for split in cached:
            for m in cached[split].arrays:
                assert np.array_equal(np.asarray(prepared[split].arrays[m]),
                                      np.asarray(cached[split].arrays[m])), (split, m)
            idx = np.arange(len(cached[split]))[::-3]
            a, b = prepared[split].get_batch(idx), cached[split].get_batch(idx)
            keys = [*cfg.resolved_modalities(), "label", "group"]
            flat = [(x[k]["input_ids"], y[k]["input_ids"]) if k == "note" else (x[k], y[k])
                    for x, y in [(a, b)] for k in keys]
            assert all(np.array_equal(u, v) for u, v in flat)
            assert len(keys) == 4 and ("note" in keys) == (layout == "fairvlmed")


def test_search_prepare_on_cluster_flag_trials_use_the_shards(ray_session, search_config, cache_dir,
                                                             tmp_path):
    """--prepare-on-cluster with a local root: the search runs the job on its Ray, the study's
    setup names the manifest, and the trial's node pulled the shards into its cache."""
    from search.record import study
    from search.runner import run_search

    scfg = search_config(tmp_path, prepare_on_cluster=True, num_samples=1, max_epochs=1,
                         grace_period=1, max_concurrent=1, log_best_model=False, final_test=False)
    outcome = run_search(scfg)
    assert outcome.best is not None and outcome.failed == 0
    prepared = study.read_study(scfg.study_dir)["setup"]["prepared"]
    assert prepared["uri"].startswith(str(tmp_path / "results" / "prepared-data"))
    pulled = [p.parent.name for p in Path(cache_dir).rglob("prepared/*/manifest.json")]
    assert prepared["sha256"] in pulled


@pytest.mark.parametrize("layout,missing", [("fairvision", "oct=0.3"), ("fairvlmed", "slo=0.2,note=0.2")])
def test_prepared_shards_keep_which_modalities_are_missing(ray_session, fresh_dataset, tmp_path,
                                                          layout, missing):
    """Samples lacking a modality: the job's presence flags and dataset card (missing counts per
    split and group) equal the local cache's of the same files, and batches carry them."""
    from search.run import dataprep
    from trainer.config import make_config
    from trainer.data import audit_dataset, build_datasets

    root = fresh_dataset(layout=layout, n_train=48, n_val=24, n_test=24, missing=missing,
                         missing_by="race")
    cfg = make_config(layout, "race", preset="tiny", data_root=str(root),
                      cache_dir=str(tmp_path / "cache"))
    job = dataprep.prepare_on_cluster(cfg, str(tmp_path / "out"), log=lambda s, **_: None,
                                      shard_samples=20)
    local = dataprep.pull(job["uri"], tmp_path / "node")
    prepared, cached = build_datasets(cfg, prepared=local), build_datasets(cfg)
    absent = 0
    for split in cached:
        idx = np.arange(len(cached[split]))
        a, b = prepared[split].get_batch(idx)["present"], cached[split].get_batch(idx)["present"]
        assert set(a) == set(b) == set(cfg.resolved_modalities())
        for m in a:
            assert np.array_equal(a[m].numpy(), b[m].numpy()), (split, m)
            absent += int((~a[m]).sum())
    assert absent > 0, "the generated data lacks no modality: the test would prove nothing"
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["card"] == audit_dataset(cfg)["card"]
