"""The same small search on one Ray node vs two Ray nodes on this host.

One node: a head with 2 CPUs. Two nodes: a head with 1 CPU and a worker raylet with 1 CPU
(tests/search/multinode.LocalCluster). Same trials, same concurrency (2), same seed, the study on
a local folder, MLflow in sqlite. Prints wall time and trials per minute per layout and writes
OUT/multinode.json and OUT/multinode.png.

Caveat: both "nodes" share this machine's cores, so the figure shows the cost of a second
raylet (scheduling, object transfer, checkpoint sync), not the gain of a second machine.

    PYTHONPATH=. python benchmarks/multinode.py --repeats 1 --out results/bench-multinode
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.search.multinode import LocalCluster  # noqa: E402

LAYOUTS = {"one node (2 CPUs)": {"head": {"num_cpus": 2}},
           "two nodes (1 + 1 CPU)": {"head": {"num_cpus": 1}, "w1": {"num_cpus": 1}}}


def search(cluster: LocalCluster, work: Path, args) -> float:
    """Wall time of one search (driver start to exit) on `cluster`."""
    cmd = [sys.executable, str(REPO / "search" / "fairvision_gender.py"), "--preset", "tiny",
           "--num-samples", str(args.trials), "--max-epochs", str(args.epochs),
           "--grace-period", str(args.epochs), "--max-concurrent", "2", "--cpus-per-trial", "1",
           "--storage-path", str(work / "results"), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
           "--no-final-test", "--finalists", "0", "--no-figures", "--data-root", str(args.data)]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=cluster.driver_env(), cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    return time.perf_counter() - start


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = [r["layout"] for r in rows]
    ax.barh(names, [r["trials_per_min"] for r in rows], color=["#4c72b0", "#dd8452"])
    for i, r in enumerate(rows):
        ax.text(r["trials_per_min"], i, f" {r['trials_per_min']:.2f}/min, {r['wall_s']:.0f} s", va="center")
    ax.set_xlabel("trials per minute (higher is better)")
    ax.set_title("Same search, one vs two Ray nodes on ONE 2-core host", fontsize=10)
    ax.set_xlim(0, max(r["trials_per_min"] for r in rows) * 1.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="results/bench-multinode")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from trainer.data.synthetic import synthesize

    args.data = out / "data"
    if not args.data.exists():
        synthesize("fairvision", args.data, 96, 48, 48, seed=0)
    rows = []
    for layout, nodes in LAYOUTS.items():
        walls = []
        for _ in range(args.repeats):
            with LocalCluster(nodes) as cluster:
                walls.append(search(cluster, Path(tempfile.mkdtemp(dir=out)), args))
        wall = sum(walls) / len(walls)
        rows.append({"layout": layout, "wall_s": round(wall, 1), "walls_s": [round(w, 1) for w in walls],
                     "trials": args.trials, "epochs": args.epochs,
                     "trials_per_min": round(args.trials / wall * 60, 2)})
        print(f"{layout:24s} wall {wall:6.1f} s  {rows[-1]['trials_per_min']:.2f} trials/min", flush=True)
    (out / "multinode.json").write_text(json.dumps(rows, indent=1))
    figure(rows, out / "multinode.png")
    print(f"wrote {out / 'multinode.json'} and {out / 'multinode.png'} "
          "(both nodes share this host's cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
