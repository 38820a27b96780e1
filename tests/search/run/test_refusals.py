"""Clear refusals instead of hangs and tracebacks (issue 20, item 6): a trial no node can hold
and no autoscaler could add a node for (it would sit PENDING forever), and an s3:// storage path
nothing answers at (a 24-line pyarrow traceback before). Each ends the search with exit status 2
and one `error:` line naming the flag or path, before any trial starts."""
import subprocess
import sys

import pytest

from tests.search.conftest import REPO, subprocess_env
from tests.search.multinode import LocalCluster, free_port


def tiny_args(data_root, tmp_path, *extra):
    return ["--data-root", data_root, "--preset", "tiny", "--num-samples", "2", "--max-epochs", "1",
            "--grace-period", "1", "--storage-path", str(tmp_path / "results"), "--name", "refused",
            "--tracking-uri", "sqlite:///" + str(tmp_path / "mlflow.db"), "--finalists", "0",
            "--no-figures", *extra]


def run_driver(args, env, tmp_path, timeout=240):
    """The entry script as a user runs it; a hang fails the test at `timeout`."""
    return subprocess.run([sys.executable, str(REPO / "search" / "fairvision_gender.py"), *args], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def no_trial_started(tmp_path) -> bool:
    return not list((tmp_path / "results").glob("refused/trial_*"))


def test_unreachable_s3_storage_is_one_line_naming_the_path(data_root, tmp_path, monkeypatch, capsys):
    from search.runner import main

    for key, value in {"AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    storage = f"s3://multifair/studies?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1"
    args = tiny_args(data_root, tmp_path, "--no-tracking")
    args[args.index("--storage-path") + 1] = storage
    assert main("fairvision", "gender", None, args) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [l for l in err.splitlines() if l.strip() and not l.startswith("!!")], err
    line, = error_lines(err)
    assert line.startswith(f"error: --storage-path {storage}: nothing answers at its endpoint"), line
    assert "Traceback" not in err



def assert_refused(out, tmp_path, expected: str) -> None:
    """Exit 2, exactly one error line (the expected one), no traceback, no trial started."""
    assert out.returncode == 2, out.stderr[-3000:]
    line, = error_lines(out.stderr)
    assert line == expected, line
    assert "Traceback" not in out.stderr and no_trial_started(tmp_path)

@pytest.mark.slow
def test_local_gpu_trial_on_a_machine_without_gpu_is_refused_not_pending(data_root, cache_dir, tmp_path):
    env = subprocess_env()
    env.pop("RAY_ADDRESS", None)
    out = run_driver(tiny_args(data_root, tmp_path, "--local", "--num-cpus", "1", "--num-gpus", "0",
                               "--gpus-per-trial", "1"), env, tmp_path)
    assert_refused(out, tmp_path, "error: --cpus-per-trial 1 --gpus-per-trial 1: this machine's embedded "
                   "Ray has CPU 1, GPU 0, which cannot hold one trial: pass --gpus-per-trial 0 to train "
                   "on this machine's CPU, or run on a cluster with GPUs")


@pytest.mark.slow
def test_gpu_trial_on_an_attached_cluster_without_gpu_or_autoscaler_is_refused(data_root, cache_dir,
                                                                             tmp_path):
    with LocalCluster({"head": {"num_cpus": 1}, "w1": {"num_cpus": 1}}) as cluster:
        out = run_driver(tiny_args(data_root, tmp_path, "--gpus-per-trial", "1", "--max-concurrent", "2"),
                         cluster.driver_env(), tmp_path)
    assert_refused(out, tmp_path, "error: --cpus-per-trial 1 --gpus-per-trial 1: no node of this Ray "
                   "cluster (2 nodes of CPU 1, GPU 0) can hold one trial and no autoscaler runs that "
                   "could add one: lower them or add such nodes")
