"""What a real search at the paper's sizes costs on a cluster, from the figures measured on an H200
(benchmarks/results/bench-gpu-h200.json) plus every stage the GPU benchmark's own projection
(`bench_gpu.py --project`: trial-epochs x epoch time / GPUs) leaves out: node start, data
preparation, trial start, ASHA's idle tail, the decision stage and the test. Prints a table and
writes it (--out, JSON + Markdown). No GPU and no cluster needed: arithmetic and a simulation.

    python benchmarks/projection.py --out benchmarks/results/projection-paper

The search: --trials trials of --epochs epochs on FairVision (6,000 train / 1,000 validation /
3,000 test of 10,000 samples), ASHA with grace 2 and factor 3, one trial per GPU (README: "Trials
per GPU"). ASHA's schedule is simulated with Ray Tune's own rung bookkeeping
(ray.tune.schedulers.async_hyperband._Bracket, the class ASHAScheduler delegates to): trials start
as GPUs free up, report each epoch, and are stopped at the rungs as Tune would; the makespan then
includes the tail where the last trials run on while other GPUs idle. Two orders of trial quality
bound what TPE does: "random" (every trial equally likely to be good) and "improving" (later
trials better, as a converging sampler makes them: more of them pass the rungs).

Sources of every figure are in FIGURES / ASSUMED below and repeated in the output; what is an
assumption (not measured here) says so.
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH = REPO / "benchmarks" / "results" / "bench-gpu-h200.json"
BENCH_LINK = "benchmarks/results/bench-gpu-h200.json"

# Measured elsewhere in this repository (not in bench-gpu-h200.json).
FIGURES = {
    "trial_overhead_s": (0.10, "README, Search service: Ray + MLflow overhead per trial (CPU, tiny preset)"),
    "checkpoint_s_per_epoch": (0.16, "README, Checkpoints at the paper preset: training-thread cost per epoch"),
    "bootstrap_s_per_320": (19.0, "shared/docs/stack.md, Intervals: paired BCa bootstrap, 2000 resamples, 320 samples"),
}
# Not measured here: stated ranges with where they come from.
ASSUMED = {
    "boot_s": ((30, 90), "instance boot to SSH: 25-40 s measured by others on general-purpose types "
               "(daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html, "
               "depot.dev/blog/faster-ec2-boot-time); GPU types and the large DLAMI root volume are slower"),
    "setup_s": ((60, 180), "Ray's node setup: SSH, initialization_commands (Lustre client when the AMI "
                "lacks it, FSx mount), container start, ray start; not measured here"),
    "image_pull_s": ((120, 300), "docker pull of the project's image (~10 GB unpacked: CUDA torch wheels "
                     "+ Ray GPU base) at 100-250 MB/s plus extraction; not measured here. A baked AMI "
                     "with the image pre-pulled skips it"),
}
# Datasheet dense bf16 TFLOP/s and memory bandwidth (TB/s): a GPU's step time against the H200
# lies between the compute ratio and the bandwidth ratio (the measured step runs at 26% MFU and
# is partly memory-bound: README, The trainer on a GPU). Not measured on these GPUs.
GPUS = {
    "H200": (989.4, 4.8), "H100-80GB": (989.4, 3.35), "A100-80GB": (312.0, 2.039),
    "A100-40GB": (312.0, 1.555), "L40S": (362.0, 0.864),
}
OPTIONS = [   # (label, instance type, nodes)
    ("1 x p5en.48xlarge (8 H200, the measured GPU)", "p5en.48xlarge", 1),
    ("1 x p5.48xlarge (8 H100 80 GB)", "p5.48xlarge", 1),
    ("1 x p4de.24xlarge (8 A100 80 GB)", "p4de.24xlarge", 1),
    ("1 x p4d.24xlarge (8 A100 40 GB)", "p4d.24xlarge", 1),
    ("2 x g6e.12xlarge (8 L40S 48 GB)", "g6e.12xlarge", 2),
    ("4 x g6e.12xlarge (16 L40S 48 GB), aws-gpu.yaml's maximum", "g6e.12xlarge", 4),
]
PREPARATION_PLACEHOLDER = ("Data preparation in this table: every node builds its own cache (--prepare-rate 0, "
                           "the path without search/run/dataprep.py); --prepare-rate R --prepare-cores C puts the "
                           "cluster's preparation job (benchmarks/results/dataprep-2core.json) in its place")


def slowdown(gpu: str) -> tuple[float, float]:
    tflops, bandwidth = GPUS[gpu]
    ratios = (GPUS["H200"][0] / tflops, GPUS["H200"][1] / bandwidth)
    return min(ratios), max(ratios)


class _Trial:   # what Ray's _Bracket reads of a trial
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def simulate_asha(trials: int, gpus: int, epochs: int, epoch_s: float, start_s: float,
                  grace: int, factor: int, order: str, seed: int) -> dict:
    """Asynchronous successive halving on `gpus` slots, decided by Ray Tune's own _Bracket: each
    trial's validation score is its quality plus noise; a trial stopped at a rung frees its GPU
    for the next trial. Returns the makespan, trial-epochs, when the last trial started and the
    GPU time idle after that (the tail)."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng = np.random.default_rng(seed)
    quality = rng.uniform(size=trials)
    if order == "improving":
        quality = quality + np.linspace(0, 1, trials)
    bracket = _Bracket(min_t=grace, max_t=epochs, reduction_factor=factor, s=0)
    events, queue, free_at = [], list(range(trials)), []
    last_start, trial_epochs = 0.0, 0
    for slot in range(min(gpus, trials)):
        i = queue.pop(0)
        heapq.heappush(events, (start_s + epoch_s, i, 1, slot))
    while events:
        t, i, epoch, slot = heapq.heappop(events)
        trial_epochs += 1
        score = quality[i] + rng.normal(0, 0.05)
        action = bracket.on_result(_Trial(str(i)), epoch, score)
        if action == TrialScheduler.CONTINUE and epoch < epochs:
            heapq.heappush(events, (t + epoch_s, i, epoch + 1, slot))
        elif queue:
            last_start = t
            heapq.heappush(events, (t + start_s + epoch_s, queue.pop(0), 1, slot))
        else:
            free_at.append(t)
    makespan = max(free_at)
    return {"makespan_s": makespan, "trial_epochs": trial_epochs, "last_start_s": last_start,
            "tail_s": makespan - last_start,
            "idle_gpu_s": sum(makespan - f for f in free_at)}


def search_stage(args, epoch_s: float, start_s: float, gpus: int) -> dict:
    runs = {order: [simulate_asha(args.trials, gpus, args.epochs, epoch_s, start_s, args.grace,
                                  args.factor, order, seed) for seed in range(args.seeds)]
            for order in ("random", "improving")}
    out = {}
    for order, rs in runs.items():
        ms = np.array([r["makespan_s"] for r in rs])
        out[order] = {"makespan_s": [float(ms.min()), float(np.median(ms)), float(ms.max())],
                      "trial_epochs": float(np.median([r["trial_epochs"] for r in rs])),
                      "tail_s": float(np.median([r["tail_s"] for r in rs])),
                      "idle_gpu_s": float(np.median([r["idle_gpu_s"] for r in rs]))}
    return out


def option_row(args, base: dict, label: str, itype: str, nodes: int, table: dict) -> dict:
    entry = table["instance_types"][itype]
    gpus = nodes * entry["count"]
    lo, hi = slowdown(entry["gpu"])
    start_s = base["trial_start_s"]
    row = {"option": label, "instance_type": itype, "nodes": nodes, "gpus": gpus,
           "gpu": entry["gpu"], "slowdown_vs_h200": [lo, hi]}
    stages = {}
    for name, f in (("fast", lo), ("slow", hi)):
        epoch_s = base["epoch_s"] * f + FIGURES["checkpoint_s_per_epoch"][0]
        search = search_stage(args, epoch_s, start_s, gpus)
        confirm_runs = (args.finalists + 2) * args.confirm_seeds
        waves = math.ceil(confirm_runs / gpus)
        confirm_s = waves * (start_s + args.epochs * epoch_s)
        test_s = 2 * base["test_forward_s"] * f + base["bootstrap_s"]
        stages[name] = {"epoch_s": epoch_s, "search": search, "confirm_runs": confirm_runs,
                        "confirm_waves": waves, "confirm_s": confirm_s, "test_s": test_s}
    row["stages"] = stages
    node_start = [sum(ASSUMED[k][0][j] for k in ("boot_s", "setup_s", "image_pull_s")) for j in (0, 1)]
    prep = base["preparation_s"]
    fast, slow = stages["fast"], stages["slow"]
    row["total_wall_s"] = [
        node_start[0] + prep + fast["search"]["random"]["makespan_s"][1] + fast["confirm_s"] + fast["test_s"],
        node_start[1] + prep + slow["search"]["improving"]["makespan_s"][1] + slow["confirm_s"] + slow["test_s"]]
    row["gpu_hours_billed"] = [gpus * (w + 60 * args.idle_timeout_min) / 3600 for w in row["total_wall_s"]]
    row["preparation_gpu_idle_h"] = gpus * prep / 3600
    return row


def base_figures(bench: dict, args) -> dict:
    from benchmarks.bench_gpu import projection as gpu_projection   # one owner of the epoch arithmetic

    p = gpu_projection(bench, trials=args.trials, epochs=args.epochs, n_train=args.n_train,
                       n_val=args.n_val)
    step = bench["modes"]["baseline"]["samples_per_s"]
    build = float(np.median([m["build_s"] for m in bench["modes"].values()]))
    cache_rate = bench["data"]["cache_build_samples_per_s"]
    bytes_per_sample = bench["ladder"]["host_copy"]["cached_bytes"] / bench["args"]["batch_size"]
    samples = args.n_train + args.n_val + args.n_test
    cache_gb = samples * bytes_per_sample / 1e9
    if args.prepare_rate:     # the cluster's preparation job, then every node pulls the shards
        preparation_s = samples / (args.prepare_rate * args.prepare_cores) + cache_gb / args.pull_gb_per_s
    else:                     # today: each node builds its own cache in one process, all at once
        preparation_s = samples / cache_rate
    return {
        "epoch_s": p["epoch_s"], "bench_gpu_projection": p,
        "trial_start_s": build + FIGURES["trial_overhead_s"][0],
        "model_build_s": build,
        "cache_build_samples_per_s": cache_rate,
        "cache_build_per_node_s": samples / cache_rate,
        "cache_gb": cache_gb,
        "preparation": "cluster job + shard pull" if args.prepare_rate else "each node builds its cache",
        "preparation_s": preparation_s,
        "test_forward_s": args.n_test / (3 * step),
        "bootstrap_s": FIGURES["bootstrap_s_per_320"][0] * args.n_test / 320,
    }


def minutes(s: float) -> str:
    return f"{s / 60:.0f}" if s >= 600 else f"{s / 60:.1f}"


def span(a: float, b: float, fmt=minutes) -> str:
    x, y = fmt(a), fmt(b)
    return x if x == y else f"{x}-{y}"


def markdown(result: dict) -> str:
    base, args = result["base"], result["args"]
    node = [sum(ASSUMED[k][0][j] for k in ASSUMED) for j in (0, 1)]
    lines = [
        f"# Projection: {args['trials']} trials x {args['epochs']} epochs, FairVision at the paper's sizes",
        "",
        f"From [{BENCH_LINK}](bench-gpu-h200.json) (H200) by `python benchmarks/projection.py` "
        "([projection.py](../projection.py)). "
        "Ranges: fast = the GPU at its compute ratio to the H200 and trials in random order; "
        "slow = its bandwidth ratio and improving trials (more pass ASHA's rungs). Minutes.",
        "",
        f"| option | GPUs | epoch (s) | node start* | data ({base['preparation']}) | search (ASHA, incl. tail) | "
        "tail | confirmation | test | **total** | GPU-hours billed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["options"]:
        f, s = r["stages"]["fast"], r["stages"]["slow"]
        lines.append(
            f"| {r['option']} | {r['gpus']} | {span(f['epoch_s'], s['epoch_s'], lambda x: f'{x:.0f}')} | "
            f"{span(*node)} | {minutes(base['preparation_s'])} | "
            f"{span(f['search']['random']['makespan_s'][1], s['search']['improving']['makespan_s'][1])} | "
            f"{span(f['search']['random']['tail_s'], s['search']['improving']['tail_s'])} | "
            f"{span(f['confirm_s'], s['confirm_s'])} ({f['confirm_runs']} runs, {f['confirm_waves']} wave"
            f"{'s' if f['confirm_waves'] > 1 else ''}) | {span(f['test_s'], s['test_s'])} | "
            f"**{span(*r['total_wall_s'])}** | {span(*r['gpu_hours_billed'], lambda x: f'{x:.0f}')} |")
    h200 = result["options"][0]["stages"]["fast"]["search"]
    lines += [
        "",
        "\\* assumed, not measured here (boot, setup, image pull: sources below).",
        "",
        f"- Epoch: {base['epoch_s']:.1f} s on the H200 ({args['n_train']} train at the measured "
        f"{base['bench_gpu_projection']['assumptions']['train_samples_per_s']:.0f} samples/s with loading, "
        f"{args['n_val']} validation as forward passes; `bench_gpu.py --project`) + "
        f"{FIGURES['checkpoint_s_per_epoch'][0]} s checkpointing.",
        f"- Trial start: {base['trial_start_s']:.1f} s (model build {base['model_build_s']:.1f} s, median of "
        f"the modes in the JSON, random init: loading pretrained weights not measured; + "
        f"{FIGURES['trial_overhead_s'][0]} s per-trial overhead of the service).",
        f"- ASHA (grace {args['grace']}, factor {args['factor']}), simulated with Ray Tune's `_Bracket`, "
        f"{args['seeds']} seeds, 8 H200: trial-epochs {h200['random']['trial_epochs']:.0f} (random order) to "
        f"{h200['improving']['trial_epochs']:.0f} (improving) of {args['trials'] * args['epochs']} "
        f"(measured on the CPU at grace 2, factor 3: 38-49%, asha-share-100x10-g2f3.json); the tail (last trial started -> last trial done) "
        f"{minutes(h200['random']['tail_s'])}-{minutes(h200['improving']['tail_s'])} min, "
        f"{h200['random']['idle_gpu_s'] / 3600:.2f}-{h200['improving']['idle_gpu_s'] / 3600:.2f} GPU-hours idle.",
        f"- Data preparation today: every node builds its own cache at "
        f"{base['cache_build_samples_per_s']:.1f} samples/s in one process (the JSON's `data` section): "
        f"{minutes(base['cache_build_per_node_s'])} min per node for "
        f"{args['n_train'] + args['n_val'] + args['n_test']:,} samples, on every node, every time a node "
        f"is replaced, while the node's GPUs wait (cache {base['cache_gb']:.1f} GB, about "
        f"{base['cache_gb'] * 1e3 / (args['n_train'] + args['n_val'] + args['n_test']):.2f} MB a sample).",
        (f"- Data preparation in this table: the cluster's job at {args['prepare_rate']} samples/s per core "
         f"x {args['prepare_cores']} cores, then each node pulls {base['cache_gb']:.1f} GB at "
         f"{args['pull_gb_per_s']} GB/s (assumed): {minutes(base['preparation_s'])} min."
         if args["prepare_rate"] else f"- {PREPARATION_PLACEHOLDER}."),
        f"- Confirmation: (finalists {args['finalists']} + paper point + plain fusion) x "
        f"{args['confirm_seeds']} seeds = full {args['epochs']}-epoch trainings, in waves of one per GPU.",
        f"- Test: the chosen model and plain fusion over {args['n_test']:,} test samples on a GPU "
        f"(forward at a third of a training step's cost, as Ray tasks on a trial node: search/run/remote.py) plus "
        f"the paired bootstrap on a CPU ({FIGURES['bootstrap_s_per_320'][0]:.0f} s for 320 samples, "
        f"scaled linearly: {base['bootstrap_s']:.0f} s, extrapolated).",
        f"- GPU-hours billed: GPUs x (total + {args['idle_timeout_min']} min idle timeout); every node is "
        "held from its start to the end.",
        "- Other GPUs than the H200: step time scaled by the datasheet ratio (dense bf16 TFLOP/s, memory "
        "bandwidth) to the H200, not measured: " + ", ".join(
            f"{g} {slowdown(g)[0]:.2f}-{slowdown(g)[1]:.2f}x" for g in GPUS if g != "H200") + ".",
        "",
        "Assumed (not measured here):",
    ]
    lines += [f"- {k}: {v[0][0]}-{v[0][1]} s: {v[1]}" for k, v in ASSUMED.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bench", default=str(BENCH))
    p.add_argument("--out", help="write OUT.json and OUT.md")
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=6000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=3000)
    p.add_argument("--grace", type=int, default=2)
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--finalists", type=int, default=3)
    p.add_argument("--confirm-seeds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=20, help="simulation seeds per order")
    p.add_argument("--idle-timeout-min", type=int, default=10)
    p.add_argument("--prepare-rate", type=float, default=0.0,
                   help="samples/s per core of the cluster's preparation job (0: today, one cache per node)")
    p.add_argument("--prepare-cores", type=int, default=64)
    p.add_argument("--pull-gb-per-s", type=float, default=1.0,
                   help="a node's shard download from object storage (assumed, not measured)")
    args = p.parse_args()
    bench = json.loads(Path(args.bench).read_text())
    table = json.loads((REPO / "cluster" / "gpu_memory.json").read_text())
    base = base_figures(bench, args)
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("bench", "out")},
              "source": BENCH_LINK, "figures": FIGURES, "assumed": ASSUMED, "base": base,
              "preparation_after_item_2": PREPARATION_PLACEHOLDER,
              "options": [option_row(args, base, *o, table) for o in OPTIONS]}
    md = markdown(result)
    print(md)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
        Path(args.out + ".md").write_text(md)


if __name__ == "__main__":
    main()
