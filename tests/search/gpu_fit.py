"""Does a cluster file's GPU hold the paper-size trial? The measured peak (bench-gpu-h200.json) times
cluster/gpu_memory.json's margin, against the GPU memory of the instance type (AWS) or the
guaranteed minimum of the node's nvidia.com/gpu.memory label (KubeRay). Shared by
test_cluster_yaml.py and test_kuberay.py."""
from __future__ import annotations

import json

from tests.search.conftest import REPO

TABLE = json.loads((REPO / "cluster" / "gpu_memory.json").read_text())
BENCH = REPO / "benchmarks" / "results" / "bench-gpu-h200.json"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"          # GPU feature discovery, MiB
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


def measured_peak_gib(bench: dict | None = None) -> float:
    """The largest per-process GPU memory the paper-size trial was seen to take: every mode's
    reserved peak, the per-process nvidia-smi figure (CUDA context included) and the compile
    section's. The ladder's fp32 rows are left out: the trainer runs bf16 on a GPU."""
    bench = bench or json.loads(BENCH.read_text())
    seen = [m["peak_reserved_gib"] for m in bench["modes"].values()]
    seen += [p["nvidia_smi_gib"] for s in bench.get("share", {}).values()
             for p in s["processes"] if p.get("nvidia_smi_gib")]
    seen += [r["peak_reserved_gib"] for c in bench.get("compile", {}).values()
             for r in (c.get("eager", {}), c.get("compiled", {})) if "peak_reserved_gib" in r]
    return max(seen)


def required_mib() -> float:
    return measured_peak_gib() * 1024 * TABLE["margin"]


def instance_gpu_mib(instance_type: str) -> int | None:
    """Usable memory of one GPU of an AWS instance type; None when the table does not know it."""
    entry = TABLE["instance_types"].get(instance_type)
    return TABLE["gpus"][entry["gpu"]]["usable_mib"] if entry else None


def fit_problem(where: str, mib: float | None, what: str, unknown: str = "") -> str | None:
    """One line naming what does not fit (or is not known: `unknown` says why), or None."""
    need = required_mib()
    if mib is None:
        why = unknown or f"{what} is not in cluster/gpu_memory.json: add its GPU memory there"
        return f"{where}: {why} (the paper-size trial needs {need:.0f} MiB per GPU)"
    if mib < need:
        return (f"{where}: {what} has {mib:.0f} MiB per GPU; the paper-size trial needs {need:.0f} "
                f"MiB ({measured_peak_gib():.1f} GiB measured x {TABLE['margin']} margin)")
    return None


def aws_problems(config: dict) -> list[str]:
    """Every worker type of a Ray cluster config on AWS: its instance type known and big enough."""
    if config["provider"]["type"] != "aws":
        return []
    out = []
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        itype = node["node_config"].get("InstanceType", "")
        problem = fit_problem(f"available_node_types.{name}", instance_gpu_mib(itype), itype)
        out += [problem] if problem else []
    return out


def _term_min_mib(expressions: list[dict]) -> float | None:
    """The least GPU memory one nodeSelectorTerm guarantees, from a nvidia.com/gpu.memory Gt / In
    expression or an instance-type In expression (each type looked up); None: not constrained."""
    best = None
    for e in expressions:
        key, op, values = e.get("key"), e.get("operator"), e.get("values", [])
        if key == GPU_MEMORY_LABEL and op == "Gt" and len(values) == 1:
            low = int(values[0]) + 1
        elif key == GPU_MEMORY_LABEL and op == "In" and values:
            low = min(int(v) for v in values)
        elif key == INSTANCE_TYPE_LABEL and op == "In" and values:
            sizes = [instance_gpu_mib(v) for v in values]
            low = None if None in sizes else min(sizes)
        else:
            continue
        if low is not None:
            best = low if best is None else max(best, low)
    return best


def pod_min_gpu_mib(pod_spec: dict) -> float | None:
    """The least GPU memory per GPU a pod can be scheduled onto, by its nodeSelector or required
    node affinity; None when nothing constrains it (any GPU node will do)."""
    selector = pod_spec.get("nodeSelector", {})
    if GPU_MEMORY_LABEL in selector:
        return int(selector[GPU_MEMORY_LABEL])
    if INSTANCE_TYPE_LABEL in selector:
        return instance_gpu_mib(selector[INSTANCE_TYPE_LABEL])
    required = (pod_spec.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution", {}))
    terms = required.get("nodeSelectorTerms", [])
    mins = [_term_min_mib(t.get("matchExpressions", [])) for t in terms]
    if not terms or None in mins:
        return None                   # terms are ORed: an unconstrained one lets any node in
    return min(mins)


def kuberay_problems(cluster_spec: dict) -> list[str]:
    out = []
    for group in cluster_spec.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        if not any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"]):
            continue
        problem = fit_problem(f"workerGroupSpecs[{group['groupName']}]", pod_min_gpu_mib(pod),
                              "the smallest GPU its node selector admits", unknown=(
                                  f"no nodeSelector or required node affinity on {GPU_MEMORY_LABEL} "
                                  f"(or {INSTANCE_TYPE_LABEL} of known types): pods can land on any GPU"))
        out += [problem] if problem else []
    return out
