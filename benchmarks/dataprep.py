"""Data preparation benchmark: samples/s per core of the cluster preparation job
(search/run/dataprep.py) on a generated FULL-SIZE FairVision set (200x200 SLO, 200^3 OCT), with 1 and
2 Ray CPUs, beside the local one-process cache builder (trainer/data/cache.py) on the same files.
The paper preset's preprocessing (224x224, 10 OCT slices). Prints JSON (and writes it with --json).

    python benchmarks/dataprep.py --json benchmarks/results/dataprep-2core.json
    python benchmarks/dataprep.py --data /path/to/full-size --cpus 1,2,4   # an existing set
    python benchmarks/dataprep.py --s3     # also through moto's S3 fake (correctness, not speed)

Two rates: samples per wall-clock second (what this machine gave, shared with whatever else runs
on it: the load average is recorded) and samples per CPU-second of the shard tasks (process CPU
time: what one dedicated core gives, the figure to scale by the cluster's cores).

The job reads a local folder here: what it measures is decoding + audit + preprocessing + writing
the shards, the CPU part. Reading ~80 GB from S3 is an I/O term of its own (docs/dataprep.md).
Each run starts an embedded Ray with that many CPUs and warms its workers (importing torch is
seconds per worker, paid once per node, not per sample) before the clock starts.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def _warm(cpus: int) -> float:
    """Start one worker per CPU and import the trainer's preprocessing in each."""
    import ray

    @ray.remote(num_cpus=1)
    def touch():
        import trainer.data.cache  # noqa: F401 (torch, numpy)
        time.sleep(1.0)           # keep the worker busy so each CPU gets its own
        return os.getpid()

    started = time.perf_counter()
    ray.get([touch.remote() for _ in range(cpus)])
    return time.perf_counter() - started


def run_job(cfg, cpus: int, out: str, shard_samples: int) -> dict:
    from search.run import dataprep
    from search.run.embedded_ray import local_ray

    with local_ray(num_cpus=cpus):
        warm_s = _warm(cpus)
        job = dataprep.prepare_on_cluster(cfg, out, shard_samples=shard_samples)
    rate = job["samples"] / job["seconds"]
    return {"cpus": cpus, "source": dataprep.shown(cfg.data_root), "sha256": job["sha256"],
            "samples": job["samples"], "seconds": round(job["seconds"], 2),
            "samples_per_s": round(rate, 2), "samples_per_s_per_core": round(rate / cpus, 2),
            "task_cpu_s": round(job["task_cpu_s"], 2),
            "samples_per_cpu_s": round(job["samples"] / job["task_cpu_s"], 2),
            "warm_up_s": round(warm_s, 2), "shard_samples": shard_samples}


def run_s3(cfg, root: Path, cpus: int, shard_samples: int, local_manifest: Path) -> dict:
    """The same set uploaded to moto's server (a FAKE of S3, in memory on this machine: its speed
    says nothing about S3's), prepared from and to it; the shards' sha256 must be the local
    run's (same bytes), so only the source line of the manifest differs."""
    import json

    from tests.search.servers import FakeS3

    s3 = FakeS3()
    saved = {k: os.environ.get(k) for k in s3.env}
    os.environ.update(s3.env)   # before Ray starts: its workers read the fake too
    try:
        client = s3.client()
        started = time.perf_counter()
        for path in sorted(root.rglob("data_*.npz")):
            client.put_object(Bucket=s3.bucket, Key=f"raw/{path.relative_to(root).as_posix()}",
                              Body=path.read_bytes())
        upload_s = time.perf_counter() - started
        run = run_job(cfg.replace(data_root=s3.uri("raw")), cpus, s3.uri("prepared"),
                      shard_samples)

        def shard_hashes(manifest: dict) -> list:
            return [(p["file"], p["sha256"]) for s in manifest["splits"].values()
                    for sh in s["shards"] for p in sh["parts"].values()]

        got = json.loads(client.get_object(Bucket=s3.bucket, Key=next(
            k for k in s3.keys("prepared") if k.endswith("manifest.json")))["Body"].read())
        same = shard_hashes(got) == shard_hashes(json.loads(local_manifest.read_text()))
        return {**run, "upload_s": round(upload_s, 2), "shards_equal_local_run": same,
                "note": "moto (a fake of S3, in memory on this machine): correctness, not speed"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3.close()


def run_local(cfg) -> dict:
    """The trainer's own cache builder, one process, as every node runs it today."""
    import torch

    from trainer.data import prepare

    torch.set_num_threads(1)
    started, cpu = time.perf_counter(), time.process_time()
    summary = prepare(cfg)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    n = sum(s["n"] + s["dropped_unknown"] for s in summary["splits"].values())
    return {"samples": n, "seconds": round(seconds, 2), "samples_per_s": round(n / seconds, 2),
            "cpu_s": round(cpu, 2), "samples_per_cpu_s": round(n / cpu, 2), "torch_threads": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="an existing full-size FairVision folder")
    p.add_argument("--n", type=int, default=40, help="samples to generate (train 60%%, val/test 20%%)")
    p.add_argument("--cpus", default="1,2", help="Ray CPU counts to run the job with")
    p.add_argument("--shard-samples", type=int, default=4,
                   help="small shards so that a few dozen samples still fill every CPU")
    p.add_argument("--s3", action="store_true",
                   help="also read the set from moto's S3 fake (uploaded first) and write there")
    p.add_argument("--json", default="")
    a = p.parse_args()

    from trainer.config import make_config
    from trainer.jsonout import dumps

    work = Path(tempfile.mkdtemp(prefix="dataprep-bench-"))
    try:
        root = Path(a.data) if a.data else None
        generate_s = None
        if root is None:
            from trainer.data.synthetic import synthesize

            n_val = n_test = max(2, a.n // 5)
            started = time.perf_counter()
            root = synthesize("fairvision", work / "raw", n_train=a.n - n_val - n_test,
                              n_val=n_val, n_test=n_test, full_size=True, seed=1)
            generate_s = time.perf_counter() - started
        raw_bytes = sum(f.stat().st_size for f in root.rglob("data_*.npz"))
        cfg = make_config("fairvision", "gender", preset="paper", data_root=str(root),
                          cache_dir=str(work / "cache"))
        runs = [run_job(cfg, int(c), str(work / f"out-{c}"), a.shard_samples)
                for c in a.cpus.split(",")]
        first = next((work / f"out-{runs[0]['cpus']}").glob("*/manifest.json"))
        s3 = run_s3(cfg, root, runs[-1]["cpus"], a.shard_samples, first) if a.s3 else None
        local = run_local(cfg)
        out = {"benchmark": "dataprep", "data": "generated full-size FairVision (200x200 SLO, "
               "200x200x200 OCT)" if not a.data else str(root),
               "preprocessing": {"image_size": cfg.image_size, "oct_slices": cfg.oct_slices},
               "raw_bytes": raw_bytes, "raw_bytes_per_sample": raw_bytes // runs[0]["samples"],
               "generate_s": generate_s, "job": runs, "job_from_s3_fake": s3, "local_cache_builder": local,
               "machine": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                           "python": platform.python_version(), "platform": platform.platform()},
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = dumps(out, indent=1)
        print(text)
        if a.json:
            Path(a.json).write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
