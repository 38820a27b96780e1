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


# --- at the paper's sizes (issue 20): GPUs that hold the trial, read-many data, the cache and
# /dev/shm on volumes, an entrypoint the submitter pod can expand ---------------------------------

from tests.search.gpu_fit import kuberay_problems, required_mib  # noqa: E402

READ_MANY = {"ReadOnlyMany", "ReadWriteMany"}


def cluster_specs():
    return {"raycluster.yaml": load("raycluster.yaml")["spec"],
            "rayjob.yaml": load("rayjob.yaml")["spec"]["rayClusterSpec"]}


def pods(spec):
    return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_gpu_pods_land_only_on_gpus_that_hold_the_measured_peak(name):
    assert kuberay_problems(cluster_specs()[name]) == []


def test_gpu_fit_check_refuses_an_unconstrained_or_small_selector():
    spec = cluster_specs()["raycluster.yaml"]
    pod = spec["workerGroupSpecs"][0]["template"]["spec"]
    small = copy.deepcopy(spec)
    expr = small["workerGroupSpecs"][0]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    expr["values"] = [str(int(required_mib()) - 2000)]          # a 24 GB-class GPU would pass
    assert "MiB per GPU" in kuberay_problems(small)[0]
    none = copy.deepcopy(spec)
    del none["workerGroupSpecs"][0]["template"]["spec"]["affinity"]
    assert "pods can land on any GPU" in kuberay_problems(none)[0]
    by_type = copy.deepcopy(spec)
    by_type["workerGroupSpecs"][0]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] = [
        {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                               "values": ["g6e.xlarge", "p4d.24xlarge"]}]}]
    assert kuberay_problems(by_type) == []
    by_type["workerGroupSpecs"][0]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]["values"].append("g5.xlarge")
    assert kuberay_problems(by_type)
    assert pod["affinity"]                                     # the shipped file is untouched


def test_data_claim_is_read_many_and_mounted_read_only():
    docs = manifests()["data.yaml"]
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    volumes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolume"}
    for name, spec in cluster_specs().items():
        for pod in pods(spec):
            for v in pod["volumes"]:
                if "persistentVolumeClaim" not in v:
                    continue
                claim = claims[v["persistentVolumeClaim"]["claimName"]]
                modes = set(claim["spec"]["accessModes"])
                assert modes and modes <= READ_MANY, (name, modes)
                bound = volumes[claim["spec"]["volumeName"]]
                assert set(bound["spec"]["accessModes"]) <= READ_MANY
                assert v["persistentVolumeClaim"]["readOnly"] is True


def test_cache_on_an_emptydir_and_dev_shm_enlarged():
    for name, spec in cluster_specs().items():
        for pod in pods(spec):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in pod["containers"]:
                mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
                cache = {e["name"]: e.get("value") for e in c["env"]}.get("MULTIFAIR_CACHE")
                assert cache in mounts and "emptyDir" in mounts[cache], \
                    f"{name} {c['name']}: the cache is not on an emptyDir (the writable layer)"
                shm = mounts.get("/dev/shm", {}).get("emptyDir", {})
                assert shm.get("medium") == "Memory" and shm.get("sizeLimit"), \
                    f"{name} {c['name']}: /dev/shm is the container default (64 MB)"
                assert "ephemeral-storage" in c["resources"]["requests"]


def unexpanded(entrypoint: str, env: set[str]) -> list[str]:
    """$NAME / ${NAME} the submitter's shell would expand without a value ($(cmd) is meant)."""
    import re
    return [n for n in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", entrypoint) if n not in env]


def test_rayjob_entrypoint_names_no_variable_the_submitter_lacks():
    job = load("rayjob.yaml")["spec"]
    submitter = job.get("submitterPodTemplate", {}).get("spec", {}).get("containers", [{}])[0]
    env = {e["name"] for e in submitter.get("env", [])}
    assert unexpanded(job["entrypoint"], env) == []
    assert unexpanded("python x.py --tracking-uri $MLFLOW_TRACKING_URI --name a-$(date +%s)", env) \
        == ["MLFLOW_TRACKING_URI"]
    # the URI then comes from the head's environment, where the driver runs
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "multifair-mlflow"} in [e["secretRef"] for e in head["envFrom"]]
    assert "--tracking-uri" not in job["entrypoint"]


def test_image_build_checks_the_installed_pins(tmp_path):
    """The Dockerfile runs cluster/installed_pins.py after installing: it holds in this venv (the
    same pins) and names the package when one differs."""
    import subprocess
    import sys

    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert "python cluster/installed_pins.py pyproject.toml search" in dockerfile
    assert "COPY --chown=ray:users cluster/installed_pins.py" in dockerfile
    script = REPO / "cluster" / "installed_pins.py"
    ok = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "search"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "pins of" in ok.stdout, ok.stdout + ok.stderr
    import importlib.metadata
    torch = importlib.metadata.version("torch")
    bad = tmp_path / "pyproject.toml"
    bad.write_text((REPO / "pyproject.toml").read_text().replace(f'"torch=={torch}"', '"torch==0.0.1"'))
    out = subprocess.run([sys.executable, str(script), str(bad), "search"], capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout.strip() == f"torch: pinned 0.0.1, installed {torch}"
