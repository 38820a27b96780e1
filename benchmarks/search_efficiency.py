"""Search efficiency on generated data: best validation ES-AUC reached per epoch of compute,
Optuna TPE + ASHA against random search without early stopping, same number of trials, several
seeds. Target: TPE + ASHA reaches random search's best ES-AUC for at most a third of its epochs.

    python benchmarks/search_efficiency.py [--seeds 0,1,2] [--num-samples 6] [--max-epochs 4]
"""
import argparse
import tempfile

from search.run.embedded_ray import init_local_ray
from search.runner import SearchConfig, run_search


def curve(results):
    """[(epochs spent so far, best es_auc so far)] in the order epochs finished."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        if df is not None:
            rows += list(zip(df["timestamp"], df["es_auc"]))
    rows.sort()
    best, out = float("-inf"), []
    for i, (_, v) in enumerate(rows, 1):
        best = max(best, v)
        out.append((i, best))
    return out


def epochs_to_reach(points, target):
    return next((n for n, best in points if best >= target - 1e-9), None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--sizes", default="96,48,48")
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="search-efficiency-")
    init_local_ray(num_cpus=2)   # loopback only
    print("seed  random: best / epochs   tpe+asha: best / epochs   tpe+asha epochs to random's best  ratio")
    ratios = []
    for seed in (int(s) for s in a.seeds.split(",")):
        points = {}
        for searcher, scheduler in (("random", "none"), ("tpe", "asha")):
            scfg = SearchConfig("fairvision", "gender", preset="tiny", num_samples=a.num_samples,
                                max_epochs=a.max_epochs, grace_period=1, reduction_factor=2,
                                max_concurrent=2, cpus_per_trial=1, seed=seed, verbose=0,
                                searcher=searcher, scheduler=scheduler, no_tracking=True,
                                synthetic_sizes=tuple(int(x) for x in a.sizes.split(",")),
                                name=f"{searcher}-{scheduler}-s{seed}", storage_path=out,
                                sets=[f"cache_dir={out}/cache"], log_best_model=False,
                                finalists=0, figures=False)   # the search alone is measured
            points[searcher] = curve(run_search(scfg).results)
        rnd, tpe = points["random"], points["tpe"]
        reach = epochs_to_reach(tpe, rnd[-1][1])
        ratio = reach / rnd[-1][0] if reach else float("nan")
        ratios.append(ratio)
        print(f"{seed:4d}  {rnd[-1][1]:.4f} / {rnd[-1][0]:3d}          {tpe[-1][1]:.4f} / {tpe[-1][0]:3d}"
              f"            {reach if reach else 'not reached':>5}                       {ratio:.2f}", flush=True)
    reached = [r for r in ratios if r == r]
    print(f"reached random's best in {len(reached)}/{len(ratios)} seeds; mean epoch ratio "
          f"{sum(reached) / max(len(reached), 1):.2f} (target <= 0.33)")


if __name__ == "__main__":
    main()
