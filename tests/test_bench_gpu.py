"""benchmarks/bench_gpu.py on the CPU at tiny sizes: the sections run, the FLOP count is torch's,
a failing method is recorded instead of ending the run, and the projection follows its inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_gpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow   # the benchmark script end to end in its own interpreter
def test_quick_run_writes_every_section_and_counts_flops(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick",
                    "--sections", "env,modes,ladder,epoch", "--modes", "baseline,full,nonsense",
                    "--ladder-modes", "baseline", "--out", str(out)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=600)
    data = json.loads(out.read_text())
    assert data["sections_done"] == ["env", "data", "modes", "ladder", "epoch", "projection"]
    modes = data["modes"]
    assert "mode='nonsense'" in modes["nonsense"]["error"]        # recorded, the run went on
    for mode in ("baseline", "full"):
        assert modes[mode]["flops_per_step"] > 0 and modes[mode]["median_s"] > 0
    assert modes["baseline"]["ratio_to_baseline"] == 1.0
    # same encoders, same batch: MultiFair's extras are a rounding error in FLOPs
    assert modes["full"]["flops_per_step"] == pytest.approx(modes["baseline"]["flops_per_step"],
                                                            rel=0.02)
    rows = data["ladder"]["baseline"]["rows"]
    assert [r["label"] for r in rows][:2] == ["fp32, explicit attention, foreach AdamW",
                                              "+ bf16 autocast"]
    assert data["epoch"]["train_samples"] == 24 * 8


def test_projection_scales_with_trials_and_epoch_share():
    data = {"modes": {"baseline": {"samples_per_s": 300.0}},
            "epoch": {"workers_0": {"samples_per_s": 200.0}}}
    p = bench_gpu.projection(data, trials=10, epochs=4, n_train=2000, n_val=900, gpus=2,
                             epoch_fraction=(0.5,))
    epoch_s = 2000 / 200 + 900 / (3 * 300)                      # 10 s train + 1 s validation
    assert p["epoch_s"] == pytest.approx(epoch_s)
    assert p["fraction_0.5"]["gpu_hours"] == pytest.approx(10 * 4 * 0.5 * epoch_s / 3600)
    assert p["fraction_0.5"]["wall_minutes"] == pytest.approx(10 * 4 * 0.5 * epoch_s / 2 / 60)


def _share_file(tmp_path, epochs=10, grace=2, factor=3, measured=0.45, sync=0.384):
    path = tmp_path / "share.json"
    path.write_text(json.dumps({"args": {"max_epochs": epochs, "grace_period": grace,
                                         "reduction_factor": factor},
                                "asha_epoch_share": measured, "synchronous_share": sync,
                                "trials": 100}))
    return path


def test_projection_reads_its_asha_share_from_the_measurement(tmp_path):
    data = {"modes": {"baseline": {"samples_per_s": 300.0}},
            "epoch": {"workers_0": {"samples_per_s": 200.0}}}
    p = bench_gpu.projection(data, share_file=_share_file(tmp_path))
    assert p["assumptions"]["epoch_fraction"] == [0.384, 0.45]
    assert p["fraction_0.45"]["trial_epochs"] == pytest.approx(100 * 10 * 0.45)
    # a share measured with another schedule is refused, naming the file and both schedules
    with pytest.raises(ValueError, match=r"share\.json.*\(10, 1, 2\).*\(10, 2, 3\)"):
        bench_gpu.projection(data, share_file=_share_file(tmp_path, grace=1, factor=2))


def test_committed_asha_share_matches_the_rung_arithmetic():
    from benchmarks.asha_share import synchronous_share

    r = json.loads(bench_gpu.ASHA_SHARE.read_text())
    a = r["args"]
    assert (a["max_epochs"], a["grace_period"], a["reduction_factor"]) == (10, 2, 3)
    assert r["epochs_trained"] == sum(r["epochs_per_trial"])
    assert r["asha_epoch_share"] == pytest.approx(r["epochs_trained"] / (a["num_samples"] * 10))
    # 100 trials: 100 x 2 epochs, ceil(100/3) = 34 go on to 6, ceil(34/3) = 12 to 10
    assert synchronous_share(100, 10, 2, 3) == pytest.approx((100 * 2 + 34 * 4 + 12 * 4) / 1000)
    assert r["synchronous_share"] == pytest.approx(synchronous_share(a["num_samples"], 10, 2, 3))
