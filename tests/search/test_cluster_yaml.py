"""The cluster YAMLs validate against the schema Ray ships, pin Ray, and install the project."""
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.search.conftest import REPO

SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


YAMLS = sorted(p.name for p in (REPO / "cluster").glob("*.yaml"))


def test_every_shipped_config_is_checked():
    assert {"aws-gpu.yaml", "local.yaml", "localhost.yaml"} <= set(YAMLS)


@pytest.mark.parametrize("name", YAMLS)
def test_cluster_yaml(name):
    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    jsonschema.validate(config, SCHEMA)
    setup = " ".join(config["setup_commands"])
    assert f"=={ray.__version__}" in setup and "-e ~/multifair-tune[search]" in setup
    assert "~/multifair-tune" in config["file_mounts"]
    if config["provider"]["type"] == "local":
        assert "available_node_types" not in config


def test_jobs_runtime_env_pins_equal_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "cluster" / "jobs" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert env["pip"]["packages"] == project["dependencies"] + project["optional-dependencies"]["search"]
