"""The search service's own cost, side by side with plain Optuna, in one run (issue 13).

The same trainer, generated data, five-parameter space (MultiFair `full`), sampler (TPE, the
same seed, the paper's point first) and budget (N trials, at most E epochs, successive halving
with the same grace period and reduction factor, 2 at a time) through:
  peer:    plain Optuna in this process (TPESampler + SuccessiveHalvingPruner, n_jobs=2) calling
           trainer.loop.fit with the data prepared once;
  service: run_search (embedded Ray on loopback, Tune + OptunaSearch + ASHA, MLflow sqlite store,
           checkpoints, the chosen trial's test score and model logged; no confirmation stage).
Prints both walls, the ratio, seconds per trained epoch and where the service's seconds go, from
measurements: the stages of the driver (tracking store, data, Ray start, the Tune run, the closing
summary with the test score and model logging) and, per trial, the time from Tune starting it to
its code running, the trainer import, data, model build, per-epoch checkpoint and report, and the
driver's MLflow callback.

    python benchmarks/search_vs_optuna.py [--num-samples 12] [--max-epochs 4] [--sizes 192,96,96]
        [--json out.json] [--skip-peer]
    python benchmarks/search_vs_optuna.py --from-json benchmarks/results/search-vs-optuna-12x4.json
    python benchmarks/search_vs_optuna.py --repeats 4 [--json out.json]

With --repeats R each side runs R times in fresh processes, interleaved in the order peer, service,
service, peer, peer, ... (ABBA: a drift in the machine's load falls on both sides alike), on the
same generated data; the ratio is given per repeat and as a geometric mean with a 95% t interval
over the repeats' log ratios, and the breakdown is the median repeat's.

Not a timed test: this machine is shared; run it on a quiet machine and read the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODE = "full"
CONCURRENCY = 2


def make_data(out: Path, sizes: tuple[int, int, int], seed: int):
    from search.runner import SearchConfig, base_config, generate_data
    from trainer.data import build_datasets, prepare

    # the service's own generator and base config, so both sides train the same thing
    scfg = SearchConfig("fairvision", "gender", preset="tiny", mode=MODE, synthetic_sizes=sizes,
                        storage_path=str(out), sets=[f"cache_dir={out}/cache"], seed=seed,
                        finalists=0, figures=False)
    generate_data(scfg)
    cfg = base_config(scfg)
    prepare(cfg)
    return scfg.data_root, cfg, build_datasets(cfg)


def run_peer(cfg, datasets, a) -> dict:
    """Plain Optuna, one process, two threads: the least a search of this budget costs."""
    import optuna

    from search.record.space import baseline_point, optuna_distributions
    from search.run.trainable import trial_config
    from trainer.loop import fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=a.seed, multivariate=True, constant_liar=True)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=a.grace_period,
                                                    reduction_factor=a.reduction_factor)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.enqueue_trial(baseline_point("fairvision", "gender", MODE, "tiny"))
    dists = optuna_distributions()
    epoch_s, lock = [], threading.Lock()

    def objective(trial):
        params = {name: trial.suggest_float(name, d.low, d.high, log=d.log) for name, d in dists.items()}
        cfg_t = trial_config(params, {**cfg.to_dict(), "epochs": a.max_epochs})
        best = {"v": float("-inf")}
        clock = {"t": time.perf_counter()}

        def on_epoch(report):
            with lock:
                epoch_s.append(time.perf_counter() - clock["t"])
            best["v"] = max(best["v"], float(report.val["es_auc"]))
            trial.report(float(report.val["es_auc"]), report.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            clock["t"] = time.perf_counter()

        fit(cfg_t, on_epoch=on_epoch, progress=False, datasets=datasets)
        return best["v"]

    import torch

    # its best setting: one intra-op thread per concurrent trial (two trials of 2 threads each on
    # 2 cores spin against each other), as Ray gives each 1-CPU trial
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // CONCURRENCY))
    started = time.perf_counter()
    study.optimize(objective, n_trials=a.num_samples, n_jobs=CONCURRENCY)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "epochs": len(epoch_s), "epoch_s_sum": sum(epoch_s),
            "epoch_s_median": statistics.median(epoch_s), "trials": len(study.trials),
            "best_es_auc": study.best_value}


def run_service(data_root: str, out: Path, a, tag: str = "") -> dict:
    from search.runner import SearchConfig, run_search

    scfg = SearchConfig("fairvision", "gender", preset="tiny", mode=MODE, local=True,
                        num_cpus=CONCURRENCY, num_samples=a.num_samples, max_epochs=a.max_epochs,
                        grace_period=a.grace_period, reduction_factor=a.reduction_factor,
                        max_concurrent=CONCURRENCY, cpus_per_trial=1, verbose=0, data_root=data_root,
                        storage_path=str(out / f"service{tag}"), sets=[f"cache_dir={out}/cache"],
                        seed=a.seed, finalists=0, figures=False,
                        tracking_uri="sqlite:///" + str(out / f"mlflow{tag}.db"))   # a fresh store each run
    started = time.perf_counter()
    outcome = run_search(scfg)
    wall = time.perf_counter() - started
    rows = []   # one per trial: its results, epoch by epoch
    for r in outcome.results:
        df = r.metrics_dataframe
        rows.append(df.to_dict("records") if df is not None else [])
    return {"wall_s": wall, "timings": outcome.timings, "rows": rows,
            "best_es_auc": (outcome.best or {}).get("val", {}).get("es_auc")}


def _num(row: dict, key: str) -> float:
    """A metric of one result row; 0 where the row lacks it (NaN in the data frame)."""
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and v == v else 0.0


def breakdown(service: dict) -> dict:
    t, rows = service["timings"], [r for r in service["rows"] if r]
    first = [r[0] for r in rows]
    started = t.get("trial_started", {})
    latency = [f["cost/entry_time"] - started[f["trial_id"]] for f in first
               if f.get("trial_id") in started and "cost/entry_time" in f]
    epochs = [x.get("cost/epoch_s") for r in rows for x in r if x.get("cost/epoch_s") == x.get("cost/epoch_s")
              and x.get("cost/epoch_s") is not None]
    median_epoch = statistics.median(epochs) if epochs else 0.0
    model = [max(0.0, f["cost/first_epoch_s"] - median_epoch) for f in first if "cost/first_epoch_s" in f]
    # a trial's span from Tune starting it to Tune seeing it end, minus its epochs' own time
    ended = t.get("trial_ended", {})
    spans = {f["trial_id"]: ended[f["trial_id"]] - started[f["trial_id"]] for f in first
             if f.get("trial_id") in started and f.get("trial_id") in ended}
    trained = {r[0]["trial_id"]: sum(_num(x, "cost/epoch_s") or _num(x, "cost/first_epoch_s") for x in r)
               for r in rows}
    in_trial = [spans[k] - trained[k] for k in spans]
    slots = t.get("search_s", 0.0) * CONCURRENCY
    col = lambda key: [x[key] for r in rows for x in r if x.get(key) == x.get(key) and key in x]  # noqa: E731
    n_epochs = sum(len(r) for r in rows)
    return {
        "trials": len(rows), "epochs": n_epochs, "epoch_s_median": median_epoch,
        "workers": len({x.get("worker_pid") for r in rows for x in r}),
        "driver": {k: t.get(k, 0.0) for k in ("tracking_s", "data_s", "ray_start_s", "search_s",
                                              "summary_s", "decide_s")},
        "per_trial": {
            "start_latency_s": statistics.mean(latency) if latency else float("nan"),
            "import_s": statistics.mean(col("cost/import_s") or [0.0]),
            "data_s": statistics.mean(col("cost/data_s") or [0.0]),
            "model_build_s": statistics.mean(model or [0.0]),
            "checkpoint_s_per_epoch": statistics.mean(col("cost/checkpoint_s") or [0.0]),
            "report_s_per_epoch": statistics.mean(col("cost/report_s") or [0.0]),
            "mlflow_callback_s": t.get("mlflow_callback_s", 0.0) / max(len(rows), 1),
            "in_trial_overhead_s": statistics.mean(in_trial) if in_trial else float("nan"),
        },
        # trial-slot seconds of the Tune run not inside any trial: scheduling gaps, sampling, and
        # the tail where fewer trials than slots remain (the peer has the same tail)
        "idle_slot_s_per_trial": (slots - sum(spans.values())) / max(len(rows), 1),
        "first_trial_start_s": min(started.values(), default=0.0) - t.get("search_started", 0.0),
        "mlflow_start_s": t.get("mlflow_start_s", 0.0),
        "tune_to_first_trial_s": min(started.values(), default=0.0) - t.get("tune_started", 0.0),
        "last_trial_end_s": max(ended.values(), default=0.0) - t.get("search_started", 0.0),
        "timeline": sorted((round(started[k] - t.get("search_started", 0.0), 2),
                            round(ended[k] - t.get("search_started", 0.0), 2), round(trained[k], 2))
                           for k in spans),
    }


def overhead(b: dict) -> dict:
    """The per-trial overhead of the Tune run, measured one way: trial-slot seconds of the run
    (search_s x concurrency) minus the trials' epoch seconds (epochs x median epoch), per trial.
    Split into the set-up before the first trial starts (Tune's set-up, the MLflow study run, the
    trial workers importing torch: a fixed cost of the search, spread over its trials here) and
    the rest: every per-trial cost (start latency, model build, report and checkpoint, scheduling
    gaps, the driver's MLflow logging while slots wait) and the tail of the last trials."""
    slots = b["driver"]["search_s"] * CONCURRENCY
    compute = b["epochs"] * b["epoch_s_median"]
    trials = max(b["trials"], 1)
    setup = b["first_trial_start_s"] * CONCURRENCY / trials
    total = (slots - compute) / trials
    return {"per_trial_s": total, "setup_per_trial_s": setup, "per_trial_after_setup_s": total - setup}


def summary(a: dict, peer: dict | None, service_wall: float, b: dict, best=None) -> list[str]:
    """The benchmark's closing lines, from what its JSON holds (--from-json re-prints them)."""
    d, pt, o = b["driver"], b["per_trial"], overhead(b)
    out = [f"== search vs plain Optuna: {a['num_samples']} trials, <= {a['max_epochs']} epochs, "
           f"successive halving (grace {a['grace_period']}, factor {a['reduction_factor']}), "
           f"{CONCURRENCY} at a time, data {a['sizes']} =="]
    if peer:
        out.append(f"plain Optuna (one process)   wall {peer['wall_s']:6.1f} s   {peer['epochs']} "
                   f"epochs, {peer['epoch_s_median']:.2f} s/epoch (median)   best val ES-AUC "
                   f"{peer['best_es_auc']:.4f}")
    out.append(f"service (embedded Ray/Tune)  wall {service_wall:6.1f} s   {b['epochs']} epochs, "
               f"{b['epoch_s_median']:.2f} s/epoch (median)"
               + (f"   best val ES-AUC {best:.4f}" if best is not None else "")
               + f"   trials ran in {b['workers']} worker process(es)")
    if peer:
        closing = d["summary_s"] + d["decide_s"]
        out.append(f"ratio service / peer: {service_wall / peer['wall_s']:.2f}x   (search stage "
                   f"only, without Ray start and the closing test/model logging: "
                   f"{d['search_s'] / peer['wall_s']:.2f}x; goal <= 3x)   closing stage {closing:.1f} s")
    out.append("where the service's seconds go (driver):")
    out += [f"  {k:<14} {v:6.2f} s" for k, v in d.items()]
    out.append("per trial (mean; parts of the overhead below, not added to it):")
    out += [f"  {k:<24} {v:6.3f} s" for k, v in pt.items()]
    out.append(f"Tune run: first trial started at {b['first_trial_start_s']:.1f} s (MLflow study run "
               f"{b['mlflow_start_s']:.1f} s, Tune set-up to the first trial "
               f"{b['tune_to_first_trial_s']:.1f} s), last ended at {b['last_trial_end_s']:.1f} s "
               f"of {d['search_s']:.1f} s")
    out.append(f"per-trial overhead of the Tune run: (search_s x {CONCURRENCY} - epochs x median "
               f"epoch) / trials = {o['per_trial_s']:.2f} s, of which set-up before the first "
               f"trial {o['setup_per_trial_s']:.2f} s (paid once per search) and "
               f"{o['per_trial_after_setup_s']:.2f} s per trial after it (incl. the driver's "
               f"MLflow logging; goal <= 0.5 s)")
    if peer:
        peer_over = (peer["wall_s"] * CONCURRENCY - peer["epochs"] * peer["epoch_s_median"]) / peer["trials"]
        out.append(f"  the same for the peer: {peer_over:.2f} s (model build, threads sharing "
                   f"the cores)")
    return out


def run_arm(a, out: Path, sizes) -> None:
    """One side of one repeat, in this (fresh) process; its result written to --json."""
    data_root, cfg, datasets = make_data(out, sizes, a.seed)
    if a.arm == "peer":
        result = run_peer(cfg, datasets, a)
    else:
        service = run_service(data_root, out, a, tag=f"-{a.tag}")
        result = {"wall_s": service["wall_s"], "breakdown": breakdown(service),
                  "best_es_auc": service["best_es_auc"]}
    Path(a.json).write_text(json.dumps(result, default=str))


def interleaved(a, out: Path) -> dict:
    """--repeats R: both sides R times each in fresh processes, ABBA order, same data."""
    import math
    import subprocess

    from scipy import stats

    walls, services = {"peer": [], "service": []}, []
    base = [sys.executable, __file__, "--num-samples", str(a.num_samples), "--max-epochs",
            str(a.max_epochs), "--grace-period", str(a.grace_period), "--reduction-factor",
            str(a.reduction_factor), "--sizes", a.sizes, "--seed", str(a.seed), "--out", str(out)]
    for r in range(a.repeats):
        order = ("peer", "service") if r % 2 == 0 else ("service", "peer")
        for arm in order:
            part = out / f"{arm}-{r}.json"
            subprocess.run(base + ["--arm", arm, "--tag", str(r), "--json", str(part)], check=True,
                           stdout=subprocess.DEVNULL)
            result = json.loads(part.read_text())
            walls[arm].append(result["wall_s"])
            if arm == "service":
                services.append(result)
            print(f"repeat {r} {arm:<8} wall {result['wall_s']:6.1f} s", flush=True)
    logs = [math.log(s / p) for s, p in zip(walls["service"], walls["peer"])]
    mean = statistics.mean(logs)
    half = (stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
            if len(logs) > 1 else float("nan"))
    median_run = sorted(services, key=lambda s: s["wall_s"])[len(services) // 2]
    return {"walls": walls, "ratios": [math.exp(x) for x in logs], "ratio_geomean": math.exp(mean),
            "ratio_ci95": [math.exp(mean - half), math.exp(mean + half)], "median_service": median_run}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=12)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--grace-period", type=int, default=2)      # the service's defaults
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--sizes", default="192,96,96")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--json", default="")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--from-json", metavar="JSON",
                   help="only re-print the closing lines of an earlier run's --json output")
    p.add_argument("--repeats", type=int, default=1,
                   help="each side this many times in fresh processes, interleaved (ABBA)")
    p.add_argument("--arm", choices=("peer", "service"), help=argparse.SUPPRESS)   # --repeats' child
    p.add_argument("--tag", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.from_json:
        r = json.loads(Path(a.from_json).read_text())
        if "ratios" in r:   # a --repeats run
            print("\n".join(interleaved_lines(r["args"], r)))
            return
        print("\n".join(summary(r["args"], r["peer"], r["service_wall_s"], r["breakdown"],
                               r.get("service_best_es_auc"))))
        return
    out = Path(a.out or tempfile.mkdtemp(prefix="search-vs-optuna-"))
    sizes = tuple(int(x) for x in a.sizes.split(","))
    if a.arm:
        return run_arm(a, out, sizes)
    if a.repeats > 1:
        return main_interleaved(a, out, sizes)
    data_root, cfg, datasets = make_data(out, sizes, a.seed)
    peer = None if a.skip_peer else run_peer(cfg, datasets, a)
    service = run_service(data_root, out, a)
    b = breakdown(service)
    print("\n" + "\n".join(summary(vars(a), peer, service["wall_s"], b, service["best_es_auc"])))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "cores": os.cpu_count(), "peer": peer,
                                            "breakdown": b, "overhead": overhead(b),
                                            "service_wall_s": service["wall_s"],
                                            "service_best_es_auc": service["best_es_auc"]},
                                           indent=1, default=str))


def interleaved_lines(a: dict, r: dict) -> list[str]:
    """The closing lines of a --repeats run, from what its JSON holds."""
    b, peer_median = r["median_service"]["breakdown"], statistics.median(r["walls"]["peer"])
    lo, hi = r["ratio_ci95"]
    return summary(a, None, r["median_service"]["wall_s"], b, r["median_service"]["best_es_auc"]) + [
        f"{a['repeats']} interleaved repeats: plain Optuna median {peer_median:.1f} s, service median "
        f"{statistics.median(r['walls']['service']):.1f} s (breakdown above: the median service run); "
        "ratio per repeat " + ", ".join(f"{x:.2f}x" for x in r["ratios"])
        + f"; geometric mean {r['ratio_geomean']:.2f}x [95% CI {lo:.2f}, {hi:.2f}] (goal <= 3x)"]


def main_interleaved(a, out: Path, sizes) -> None:
    make_data(out, sizes, a.seed)   # generated and cached once, before the first timed run
    r = interleaved(a, out)
    print("\n" + "\n".join(interleaved_lines(vars(a), r)))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "cores": os.cpu_count(), **r,
                                            "overhead": overhead(r["median_service"]["breakdown"])},
                                           indent=1, default=str))


if __name__ == "__main__":
    main()
