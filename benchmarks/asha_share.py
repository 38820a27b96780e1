"""ASHA's share of the trials' epochs: how many epochs a TPE + ASHA search trains, as a share of
trials x max epochs (every trial trained to the end). bench_gpu.py's projection reads this share
from the JSON written here (--json), so the projection uses a measurement with the grace period
and reduction factor it projects, not a hard-coded figure.

Beside the measurement it prints the synchronous successive-halving arithmetic for the same shape
(every trial trains to the first rung, the top 1/factor of them to the next, ...). Asynchronous
ASHA promotes at least as many trials as that (a trial is compared only with those already at its
rung, and the first to arrive always continues), so the arithmetic is a lower bound for ASHA.

Real Ray (embedded, loopback), Optuna TPE, Tune's ASHA, the tiny trainer on generated data; no
MLflow (the share does not depend on tracking).

    python benchmarks/asha_share.py --num-samples 100 --max-epochs 10 --grace-period 2 \\
        --reduction-factor 3 --json benchmarks/results/asha-share-100x10-g2f3.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rungs(max_epochs: int, grace: int, factor: int) -> list[int]:
    """ASHA's milestones below max_epochs: grace, grace*factor, ... (Ray Tune's rung rule)."""
    out, t = [], grace
    while t < max_epochs:
        out.append(t)
        t *= factor
    return out


def synchronous_share(trials: int, max_epochs: int, grace: int, factor: int) -> float:
    """Epochs of synchronous successive halving / (trials x max_epochs): all trials reach the
    first rung, ceil(n / factor) of those go on to the next rung, and so on to max_epochs."""
    n, done, epochs = trials, 0, 0
    for milestone in rungs(max_epochs, grace, factor) + [max_epochs]:
        epochs += n * (milestone - done)
        n, done = math.ceil(n / factor), milestone
    return epochs / (trials * max_epochs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--grace-period", type=int, default=2)      # the service's defaults
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--sizes", default="96,48,48")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    from search.runner import SearchConfig, run_search

    out = tempfile.mkdtemp(prefix="asha-share-")
    scfg = SearchConfig("fairvision", "gender", preset="tiny", local=True,
                        num_cpus=a.max_concurrent, num_samples=a.num_samples,
                        max_epochs=a.max_epochs, grace_period=a.grace_period,
                        reduction_factor=a.reduction_factor, max_concurrent=a.max_concurrent,
                        cpus_per_trial=1, seed=a.seed, verbose=0, searcher="tpe", scheduler="asha",
                        no_tracking=True, synthetic_sizes=tuple(int(x) for x in a.sizes.split(",")),
                        storage_path=out, sets=[f"cache_dir={out}/cache"], log_best_model=False,
                        finalists=0, figures=False, final_test=False)
    t0 = time.perf_counter()
    outcome = run_search(scfg)
    wall = time.perf_counter() - t0
    per_trial = sorted(int(r.metrics.get("epoch", 0)) for r in outcome.results if r.metrics)
    trained = sum(per_trial)
    share = trained / (a.num_samples * a.max_epochs)
    sync = synchronous_share(a.num_samples, a.max_epochs, a.grace_period, a.reduction_factor)
    result = {"args": vars(a), "cores": os.cpu_count(), "wall_s": wall, "trials": len(per_trial),
              "rungs": rungs(a.max_epochs, a.grace_period, a.reduction_factor),
              "epochs_trained": trained, "epochs_per_trial": per_trial,
              "trials_at_max_epochs": per_trial.count(a.max_epochs),
              "asha_epoch_share": share, "synchronous_share": sync}
    print(f"TPE + ASHA, {len(per_trial)} trials, <= {a.max_epochs} epochs, grace {a.grace_period}, "
          f"factor {a.reduction_factor} (rungs {result['rungs']}), {a.max_concurrent} at a time: "
          f"{trained} of {a.num_samples * a.max_epochs} epochs = share {share:.3f} "
          f"({result['trials_at_max_epochs']} trials ran to the end; synchronous successive "
          f"halving: {sync:.3f}); {wall:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
