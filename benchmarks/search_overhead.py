"""Framework overhead of the search: wall time of a whole search divided by the summed time its
trials spent training (Tune's time_total_s per trial). Real Ray, Optuna, MLflow (sqlite) and the
tiny trainer on generated data; prints one line per figure.

    python benchmarks/search_overhead.py [--num-samples 6] [--max-epochs 3] [--out DIR]
"""
import argparse
import tempfile
import time

from search.runner import SearchConfig, run_search


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--sizes", default="96,48,48")
    p.add_argument("--out", default="")
    a = p.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="search-overhead-")
    scfg = SearchConfig("fairvision", "gender", preset="tiny", local=True, num_samples=a.num_samples,
                        max_epochs=a.max_epochs, max_concurrent=2, cpus_per_trial=1, verbose=0,
                        synthetic_sizes=tuple(int(x) for x in a.sizes.split(",")),
                        storage_path=out, sets=[f"cache_dir={out}/cache"], log_best_model=False,
                        finalists=0, figures=False)   # the search alone is measured
    started = time.time()
    outcome = run_search(scfg)
    wall = time.time() - started
    train = sum(r.metrics.get("time_total_s", 0.0) for r in outcome.results if r.metrics)
    epochs = sum(int(r.metrics.get("epoch", 0)) for r in outcome.results if r.metrics)
    print(f"trials {len(outcome.results)}  epochs trained {epochs}  concurrency 2 on "
          f"{__import__('os').cpu_count()} cores")
    print(f"wall time of the search (incl. Ray start, data, MLflow) {wall:.1f} s")
    print(f"summed trial training time {train:.1f} s")
    print(f"overhead ratio wall / summed training {wall / train:.2f}  "
          f"(ideal with 2 concurrent trials: 0.50)")


if __name__ == "__main__":
    main()
