"""The cluster YAMLs validate against the schema Ray ships, pin Ray, and install the project (or run
the project's image); the AWS file's GPU workers hold the paper-size trial, mount the data, cache
on local disk and can write to S3."""
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.search.conftest import REPO
from tests.search.gpu_fit import TABLE, aws_problems, measured_peak_gib, required_mib

SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


YAMLS = sorted(p.name for p in (REPO / "cluster").glob("*.yaml"))


def load(name):
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def test_every_shipped_config_is_checked():
    assert {"aws-gpu.yaml", "local.yaml", "localhost.yaml"} <= set(YAMLS)


@pytest.mark.parametrize("name", YAMLS)
def test_cluster_yaml(name):
    config = load(name)
    jsonschema.validate(config, SCHEMA)
    setup = " ".join(config["setup_commands"])
    if "docker" in config:
        # The image is the install: Ray pinned by the image's tag and checked on every node;
        # nothing pip-installed per node (about 6 GB of torch per scale-up), no host Python used.
        assert f"ray{ray.__version__}" in config["docker"]["image"].rsplit(":", 1)[-1]
        assert f"ray.__version__ == '{ray.__version__}'" in setup
        every = setup + " ".join(config.get("initialization_commands", []))
        assert "pip install" not in every and "python3" not in every
    else:
        assert f"=={ray.__version__}" in setup and "-e ~/multifair-tune[search]" in setup
        assert "~/multifair-tune" in config["file_mounts"]
    if config["provider"]["type"] == "local":
        assert "available_node_types" not in config


def test_measured_peak_is_read_from_the_gpu_benchmark():
    bench = json.loads((REPO / "benchmarks" / "results" / "bench-gpu-h200.json").read_text())
    # the modes table's peak (README: 25.2 GiB) is below the largest process figure taken
    assert bench["modes"]["full"]["peak_gpu_gib"] < measured_peak_gib() < 40
    assert measured_peak_gib({"modes": {"a": {"peak_reserved_gib": 3.0}},
                              "share": {"1": {"processes": [{"nvidia_smi_gib": 4.5}]}}}) == 4.5
    assert required_mib() == pytest.approx(measured_peak_gib() * 1024 * TABLE["margin"])


def test_aws_gpu_workers_hold_the_measured_peak():
    assert aws_problems(load("aws-gpu.yaml")) == []


@pytest.mark.parametrize("itype,fits", [("g5.xlarge", False), ("g6.12xlarge", False),
                                        ("g4dn.xlarge", False), ("g6e.xlarge", True),
                                        ("p4d.24xlarge", True), ("p4de.24xlarge", True),
                                        ("p5.48xlarge", True), ("x9.unknown", False)])
def test_gpu_fit_check_refuses_small_and_unknown_gpus(itype, fits):
    config = load("aws-gpu.yaml")
    config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] = itype
    problems = aws_problems(config)
    assert (problems == []) is fits, problems
    if not fits:
        assert len(problems) == 1 and "gpu_worker" in problems[0] and itype in problems[0]


def test_aws_workers_mount_data_cache_locally_and_write_to_s3():
    config = load("aws-gpu.yaml")
    docker = config["docker"]
    options = " ".join(docker["run_options"])
    assert "-v /mnt/data:/mnt/data:ro" in options                     # the shared file system
    assert "-e MULTIFAIR_CACHE=/cache" in options and ":/cache" in options
    init = " ".join(config["initialization_commands"])
    assert "mount -t lustre" in init and "/opt/dlami/nvme" in init   # FSx; the DLAMI's NVMe
    assert "--gpus all" in docker["worker_run_options"]
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert workers and all("IamInstanceProfile" in t["node_config"] for t in workers.values())
    gpus = sum(t["max_workers"] * TABLE["instance_types"][t["node_config"]["InstanceType"]]["count"]
               for t in workers.values())
    assert gpus >= 8, f"the workers reach {gpus} GPUs; a paper-size search is sized for 8+"


def test_aws_image_is_the_kuberay_image():
    """One image for both paths: cluster/kuberay/Dockerfile builds what aws-gpu.yaml runs."""
    pods = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())["spec"]
    images = {c["image"] for g in [pods["headGroupSpec"], *pods["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert images == {load("aws-gpu.yaml")["docker"]["image"]}


def test_jobs_runtime_env_pins_equal_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "cluster" / "jobs" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert env["pip"]["packages"] == project["dependencies"] + project["optional-dependencies"]["search"]
