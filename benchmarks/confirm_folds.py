"""What `--confirm-folds K` costs or buys in the decision's power: confirmation repeats that
resample train/val as well as the seed, against repeats that change only the seed.

One generated FairVision dataset (fixed), plain fusion (`--mode baseline`) and MultiFair at the
paper's point (`--mode full`), R repeats each, every fit the trainer's own (tiny preset, test
split never scored): in the "seeds" scheme repeat r trains with seed 1 + r on the given split; in
the "folds" scheme repeat r also trains on trainer/data/resplit.py's cut r of train+val
(resplit_folds K, resplit_fold r). Per scheme: the seed sd of each method's best-epoch
validation ES-AUC, their within-repeat correlation, the sd of the paired difference (the figure
the rule's t test divides by), and from it, with search.decide.rule.min_detectable, the gain 8
repeats detect at 80% power (one-sided, alpha/4 as Holm's first step over 4 candidates), and the
rule's power at +0.05 with 8 repeats, K = 4, simulated at the scheme's sds and correlation
(benchmarks/decision_error.simulate). The folds/seeds ratio of the difference's sd comes with a
95% F interval (the two schemes' runs are independent).

    python benchmarks/confirm_folds.py [--repeats 12] [--folds 4] [--epochs 4] \\
        [--json benchmarks/results/confirm-folds.json]
    python benchmarks/confirm_folds.py --render benchmarks/results/confirm-folds.json

Not a timed test. Cost at the real size: the folds change nothing in a repeat's cost (the same
number of samples is trained on, K-1 folds of train+val instead of train) and add an index pass.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.decide.rule import min_detectable  # noqa: E402
from trainer.config import make_config  # noqa: E402
from trainer.data.synthetic import synthesize  # noqa: E402

METHODS = ("baseline", "full")


def best_val_es_auc(root: Path, cache: Path, mode: str, seed: int, epochs: int, folds: int, repeat: int) -> float:
    from trainer.loop import fit

    cfg = make_config("fairvision", "gender", preset="tiny", data_root=str(root), cache_dir=str(cache),
                      mode=mode, seed=seed, epochs=epochs, bootstrap=0, evaluate_test=False)
    if folds:
        cfg = cfg.replace(resplit_folds=folds, resplit_fold=repeat)
    res = fit(cfg, progress=False)
    return float(res["val"]["es_auc"])


def scheme_stats(table: dict[str, list[float]], draws: int = 20000) -> dict:
    """sd per method, within-repeat correlation, sd of the paired difference, the gain 8
    repeats detect with it (80% power, one-sided t at 0.05 / 4) and the rule's simulated power at
    +0.05 with 8 repeats and K = 4 at these sds and correlation."""
    from benchmarks.decision_error import simulate

    base, cand = np.array(table["baseline"]), np.array(table["full"])
    diff = cand - base
    sd_b, sd_c, rho = float(base.std(ddof=1)), float(cand.std(ddof=1)), float(np.corrcoef(base, cand)[0, 1])
    power = simulate(draws, 4, 8, sd_b, sd_c, rho, rho, [0.05, 0, 0, 0], 0.05, 0)["new_power"]
    return {"sd_baseline": sd_b, "sd_full": sd_c, "rho": rho, "mean_diff": float(diff.mean()),
            "sd_diff": float(diff.std(ddof=1)), "repeats": len(diff),
            "detectable_8_repeats": min_detectable(float(diff.std(ddof=1)), 8, 0.05 / 4),
            "power_005_8_repeats": power}


def summarise(out: dict) -> None:
    """Per-scheme statistics and the folds/seeds comparison, printed and stored in `out`."""
    from scipy.stats import f as fisher

    out["schemes"] = {scheme: scheme_stats(table) for scheme, table in out["values"].items()}
    for scheme, s in out["schemes"].items():
        print(f"{scheme:6s}: sd plain fusion {s['sd_baseline']:.4f}, MultiFair {s['sd_full']:.4f}, "
              f"within-repeat correlation {s['rho']:+.2f}, sd of the paired difference {s['sd_diff']:.4f} "
              f"(mean {s['mean_diff']:+.4f}); 8 repeats detect {s['detectable_8_repeats']:+.3f}; power at "
              f"+0.05 with 8 repeats, K=4: {s['power_005_8_repeats']:.3f}")
    seeds, folds = out["schemes"]["seeds"], out["schemes"]["folds"]
    ratio = folds["sd_diff"] / seeds["sd_diff"]
    df1, df2 = folds["repeats"] - 1, seeds["repeats"] - 1
    lo, hi = (math.sqrt(ratio ** 2 / fisher.ppf(q, df1, df2)) for q in (0.975, 0.025))
    out.update(sd_diff_ratio_folds_over_seeds=ratio, sd_diff_ratio_ci=[lo, hi],
               repeats_for_equal_power=ratio ** 2)   # repeats scale with the variance
    print(f"sd of the paired difference, folds / seeds: {ratio:.2f} (95% F interval {lo:.2f}-{hi:.2f}; "
          f"about {ratio ** 2:.2f}x the repeats for the same power)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--render", default="", metavar="JSON", help="recompute the statistics of a run's values")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs=3, default=[480, 160, 160], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "confirm-folds.json"))
    a = p.parse_args(argv)
    if a.render:
        out = json.loads(Path(a.render).read_text())
        summarise(out)
        Path(a.render).write_text(json.dumps(out, indent=1))
        return 0
    work = Path(tempfile.mkdtemp(prefix="confirm-folds-"))
    root = synthesize("fairvision", work / "data", n_train=a.sizes[0], n_val=a.sizes[1], n_test=a.sizes[2],
                      seed=a.data_seed)
    out = {"command": " ".join(["python benchmarks/confirm_folds.py"] + (argv if argv is not None else sys.argv[1:])),
           "sizes": a.sizes, "epochs": a.epochs, "folds": a.folds, "data_seed": a.data_seed,
           "values": {}}
    t0 = time.perf_counter()
    for scheme, folds in (("seeds", 0), ("folds", a.folds)):
        table = {m: [] for m in METHODS}
        for r in range(a.repeats):
            for m in METHODS:
                table[m].append(best_val_es_auc(root, work / "cache", m, 1 + r, a.epochs, folds, r))
            print(f"[{scheme}] repeat {r}: " + "  ".join(f"{m} {table[m][-1]:.4f}" for m in METHODS)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        out["values"][scheme] = table
    out["seconds"] = time.perf_counter() - t0
    summarise(out)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(f"written {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
