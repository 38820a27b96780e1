"""benchmarks/projection.py: the ASHA simulation (Ray Tune's own rung bookkeeping) against
hand-worked schedules, and the projection's stages against their inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import projection

ROOT = Path(__file__).resolve().parents[1]


def test_without_early_stopping_the_schedule_is_waves_of_whole_trials():
    # grace = max_t: no rung below the last epoch, every trial trains all epochs
    r = projection.simulate_asha(trials=10, gpus=4, epochs=3, epoch_s=10.0, start_s=1.0,
                                 grace=3, factor=3, order="random", seed=0)
    assert r["trial_epochs"] == 30
    assert r["makespan_s"] == pytest.approx(3 * (1 + 3 * 10))     # ceil(10/4) = 3 waves of 31 s
    assert r["last_start_s"] == pytest.approx(2 * 31)
    # third wave: 2 trials on 4 GPUs; the 2 GPUs done after wave two idle for a whole wave
    assert r["idle_gpu_s"] == pytest.approx(2 * 31)


def test_asha_share_of_epochs_matches_successive_halving():
    # grace 2, factor 3, 10 epochs: rungs 2 and 6; in random order about 1/3 pass each rung:
    # 2 + 4/3 + 4/9 = 3.78 epochs a trial; asynchronous promotion lets early trials through more
    epochs = [projection.simulate_asha(trials=300, gpus=8, epochs=10, epoch_s=1.0, start_s=0.0,
                                       grace=2, factor=3, order="random", seed=s)["trial_epochs"] / 300
              for s in range(3)]
    assert all(3.6 < e < 4.4 for e in epochs), epochs
    better_late = projection.simulate_asha(trials=300, gpus=8, epochs=10, epoch_s=1.0, start_s=0.0,
                                           grace=2, factor=3, order="improving", seed=0)
    assert better_late["trial_epochs"] / 300 > max(epochs)


def test_projection_stages_follow_the_measured_figures(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "p"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "projection.py"), "--seeds", "2",
                    "--out", str(out)], check=True, capture_output=True, timeout=600, cwd=ROOT)
    result = json.loads(out.with_suffix(".json").read_text())
    bench = json.loads((ROOT / "benchmarks" / "results" / "bench-gpu-h200.json").read_text())
    base = result["base"]
    assert base["cache_build_per_node_s"] == pytest.approx(10_000 / bench["data"]["cache_build_samples_per_s"])
    assert base["epoch_s"] == pytest.approx(bench["projection"]["epoch_s"])
    h200 = result["options"][0]
    assert h200["gpus"] == 8 and h200["slowdown_vs_h200"] == [1.0, 1.0]
    fast = h200["stages"]["fast"]
    assert fast["confirm_runs"] == 15 and fast["confirm_waves"] == 2
    assert fast["confirm_s"] == pytest.approx(2 * (base["trial_start_s"] + 10 * fast["epoch_s"]))
    # the search alone is at least its GPU time spread over the GPUs
    search = fast["search"]["random"]
    assert search["makespan_s"][1] >= search["trial_epochs"] * fast["epoch_s"] / 8
    assert "every node builds its own cache (--prepare-rate 0" in out.with_suffix(".md").read_text()


def test_preparation_today_per_node_and_with_the_cluster_job():
    import argparse
    bench = json.loads((ROOT / "benchmarks" / "results" / "bench-gpu-h200.json").read_text())
    args = argparse.Namespace(trials=100, epochs=10, n_train=6000, n_val=1000, n_test=3000,
                              prepare_rate=0.0, prepare_cores=64, pull_gb_per_s=1.0)
    today = projection.base_figures(bench, args)
    assert today["preparation_s"] == pytest.approx(10_000 / 10.568, rel=1e-3)    # ~16 min a node
    args.prepare_rate = 2.0
    job = projection.base_figures(bench, args)
    # 10,000 samples over 128 samples/s, then the cache (1.05 MB a sample) at 1 GB/s
    assert job["preparation_s"] == pytest.approx(10_000 / 128 + job["cache_gb"] / 1.0)
    assert job["cache_gb"] == pytest.approx(10_000 * 33_718_272 / 32 / 1e9)
