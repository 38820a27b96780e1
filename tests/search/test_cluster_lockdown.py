"""Every shipped cluster file (cluster/*.yaml, cluster/kuberay/*.yaml) keeps Ray and MLflow off the
internet: no public bind (0.0.0.0, ::), the dashboard (which runs submitted jobs: remote code
execution) on localhost, no port open to the world but SSH from a named range, no Kubernetes
Service, Ingress or host port reachable from outside, and Ray's token authentication on."""
import re
from pathlib import Path

import pytest
import yaml

from tests.search.conftest import REPO

FILES = sorted((REPO / "cluster").glob("*.yaml")) + sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
PUBLIC = re.compile(r"(?<![\d.])0\.0\.0\.0(?!\.)|(?<![:\w])::(/0)?(?![\w:])")
RAY_PORTS = {6379, 8265, 10001, 52365, 5000}   # GCS, dashboard/Jobs, client, agent, MLflow


def strings(node):
    """Every string value of a parsed YAML document (comments are not parsed)."""
    if isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def problems_autoscaler(cfg: dict) -> list[str]:
    out = []
    setup = " ".join(cfg.get("setup_commands", []))
    token_everywhere = "RAY_AUTH_MODE=token" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in cfg.get(key, []):
            if "ray start" not in cmd:
                continue
            if not (token_everywhere or "RAY_AUTH_MODE=token" in cmd):
                out.append(f"{key}: ray start without RAY_AUTH_MODE=token: {cmd}")
            if "--head" in cmd and "--include-dashboard=false" not in cmd \
                    and not re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", cmd):
                out.append(f"{key}: dashboard not pinned to localhost: {cmd}")
    if cfg.get("max_workers", 0) > 0 and "~/.ray/auth_token" not in cfg.get("file_mounts", {}):
        out.append("workers never get the token: no ~/.ray/auth_token in file_mounts")
    provider = cfg["provider"]
    if provider["type"] == "aws":
        rules = provider.get("security_group", {}).get("IpPermissions")
        if rules is None:
            out.append("aws: no security_group: Ray's default opens SSH to 0.0.0.0/0")
        for rule in rules or []:
            ports = set(range(int(rule.get("FromPort", 0)), int(rule.get("ToPort", 65535)) + 1))
            if ports != {22}:
                out.append(f"aws: inbound rule opens ports other than SSH: {rule}")
            cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + \
                    [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
            out += [f"aws: SSH open to the world ({c})" for c in cidrs if c in ("0.0.0.0/0", "::/0")]
    return out


def problems_kubernetes(doc: dict) -> list[str]:
    out = []
    kind, text = doc.get("kind"), yaml.safe_dump(doc)
    if kind in ("Service",) and doc.get("spec", {}).get("type") in ("LoadBalancer", "NodePort"):
        out.append(f"Service {doc['metadata']['name']} of type {doc['spec']['type']}")
    if kind == "Ingress":
        out.append("an Ingress")
    if "hostNetwork: true" in text or "hostPort" in text:
        out.append("host network or host port")
    spec = doc.get("spec", {})
    cluster = spec.get("rayClusterSpec", spec) if kind in ("RayCluster", "RayJob") else None
    if cluster is not None:
        head = cluster["headGroupSpec"]
        if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
            out.append(f"{kind}: head reachable from outside the cluster")
        if cluster.get("authOptions", {}).get("mode") != "token":
            out.append(f"{kind}: no token authentication (spec.authOptions.mode: token)")
    return out


def problems(path: Path) -> list[str]:
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        out += [f"public bind/range in {s!r}" for s in strings(doc) if PUBLIC.search(s)]
        for s in strings(doc):
            if "mlflow server" in s or "serve.sh" in s:
                if not re.search(r"127\.0\.0\.1|MLFLOW_AUTH_ADMIN_PASSWORD", s):
                    out.append(f"MLflow started without localhost bind or auth: {s}")
        out += problems_kubernetes(doc) if "apiVersion" in doc else problems_autoscaler(doc)
    return out


def test_every_cluster_file_is_checked():
    names = {p.name for p in FILES}
    assert {"aws-gpu.yaml", "local.yaml", "localhost.yaml", "raycluster.yaml", "rayjob.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_public_bind_no_open_port_token_auth(path):
    assert problems(path) == []


def test_the_checks_catch_what_the_issue_named(tmp_path):
    """The AWS file as it was (dashboard on 0.0.0.0, no token, default security group) fails."""
    cfg = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    cfg["head_start_ray_commands"] = ["ray start --head --port=6379 --dashboard-host=0.0.0.0"]
    cfg["worker_start_ray_commands"] = ["ray start --address=$RAY_HEAD_IP:6379"]
    cfg["setup_commands"] = [c for c in cfg["setup_commands"] if "RAY_AUTH_MODE" not in c]
    del cfg["provider"]["security_group"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    found = "\n".join(problems(bad))
    for expected in ("public bind", "dashboard not pinned", "without RAY_AUTH_MODE=token", "no security_group"):
        assert expected in found
    job = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    del job["spec"]["rayClusterSpec"]["authOptions"]
    assert len(problems_kubernetes(job)) == 2
    assert problems_kubernetes({"kind": "Service", "metadata": {"name": "x"}, "spec": {"type": "NodePort",
                                "ports": [{"port": p} for p in RAY_PORTS]}})
