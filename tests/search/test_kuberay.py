"""cluster/kuberay/: the RayCluster and RayJob validate against KubeRay's own CRD schemas
(/work/shared/kuberay, or $KUBERAY_CRDS) strictly, as `kubectl apply --validate=strict` would:
an unknown field is an error, not silently pruned. Plus what the schema cannot say: token auth,
an autoscaling GPU group, the Secrets the pods read, the pinned image."""
import copy
import functools
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.search.conftest import REPO

KUBERAY = REPO / "cluster" / "kuberay"
CRDS = Path(os.environ.get("KUBERAY_CRDS", REPO.parent.parent / "shared" / "kuberay"))
if not CRDS.is_dir():
    CRDS = Path("/work/shared/kuberay")


def strict(schema):
    """The CRD schema with every object closed (additionalProperties: false) unless it allows
    free keys itself (maps, x-kubernetes-preserve-unknown-fields, embedded resources)."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(kind):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # the CRDs are 1-1.4 MB of YAML
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def manifests():
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(KUBERAY.glob("*.yaml"))}


def load(name):
    return yaml.safe_load((KUBERAY / name).read_text())


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_manifest_validates_strictly_against_kuberay_crd(name, kind):
    doc = load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    jsonschema.validate(doc, crd_schema(kind))


def test_strict_schema_refuses_an_unknown_field():
    doc = load("raycluster.yaml")
    doc["spec"]["headGroupSpec"]["rayStartParms"] = {}      # a typo the CRD would prune silently
    with pytest.raises(jsonschema.ValidationError, match="rayStartParms"):
        jsonschema.validate(doc, crd_schema("RayCluster"))


def test_cluster_token_auth_cpu_head_autoscaling_gpu_workers():
    spec = load("raycluster.yaml")["spec"]
    assert spec["authOptions"]["mode"] == "token" and spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert not any("nvidia.com/gpu" in str(c["resources"]) for c in head["template"]["spec"]["containers"])
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] >= 1


def test_rayjob_runs_a_search_and_shuts_down_on_the_same_cluster_spec():
    job, cluster = load("rayjob.yaml")["spec"], load("raycluster.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["entrypoint"].startswith("python search/fairvision_gender.py ")
    assert "--storage-path s3://" in job["entrypoint"]
    assert job["rayClusterSpec"] == cluster, "rayjob.yaml drifted from raycluster.yaml"


def containers(spec):
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_secrets_read_by_pods_exist_and_image_is_pinned():
    secrets = {d["metadata"]["name"]: d for d in manifests()["secrets.example.yaml"]}
    assert all(s["kind"] == "Secret" and s["apiVersion"] == "v1" for s in secrets.values())
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} \
        <= set(secrets["multifair-mlflow"]["stringData"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets["multifair-s3"]["stringData"])
    for c in containers(load("raycluster.yaml")["spec"]):
        refs = {e["secretRef"]["name"] for e in c.get("envFrom", [])}
        assert refs <= set(secrets) and "multifair-s3" in refs
        tag = c["image"].rsplit(":", 1)[-1]
        assert tag not in ("latest", c["image"]) and "2.60.0" in tag, c["image"]
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert base.startswith("rayproject/ray:2.60.0-py311")
    assert '"ray[default,tune]==2.60.0"' in dockerfile and '".[search]"' in dockerfile
