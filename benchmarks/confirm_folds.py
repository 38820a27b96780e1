"""What `--confirm-folds K` costs or buys in the decision's power: confirmation repeats that
resample train/val as well as the seed, against repeats that change only the seed.

One generated FairVision dataset (fixed), plain fusion (`--mode baseline`) and MultiFair at the
paper's point (`--mode full`), R repeats each, every fit the trainer's own (tiny preset, test
split never scored): in the "seeds" scheme repeat r trains with seed 1 + r on the given split; in
the "folds" scheme repeat r also trains on trainer/data/resplit.py's cut r of train+val
(resplit_folds K, resplit_fold r). Per scheme: the seed sd of each method's best-epoch
validation ES-AUC, their within-repeat correlation, the sd of the paired difference (the figure
the rule's t test divides by), and from it, with search.decide.rule.min_detectable, the gain 8
repeats detect at 80% power (one-sided, alpha/4 as Holm's first step over 4 candidates).

    python benchmarks/confirm_folds.py [--repeats 8] [--folds 4] [--epochs 4] \\
        [--json benchmarks/results/confirm-folds.json]

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


def scheme_stats(table: dict[str, list[float]], repeats: int) -> dict:
    """sd per method, within-repeat correlation, sd of the paired difference, and the gain 8
    repeats detect with it (80% power, one-sided t at 0.05 / 4)."""
    base, cand = np.array(table["baseline"]), np.array(table["full"])
    diff = cand - base
    sd_diff = float(diff.std(ddof=1))
    return {"sd_baseline": float(base.std(ddof=1)), "sd_full": float(cand.std(ddof=1)),
            "rho": float(np.corrcoef(base, cand)[0, 1]), "mean_diff": float(diff.mean()),
            "sd_diff": sd_diff, "repeats": repeats,
            "detectable_8_repeats": min_detectable(sd_diff, 8, 0.05 / 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs=3, default=[480, 160, 160], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "confirm-folds.json"))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="confirm-folds-"))
    root = synthesize("fairvision", work / "data", n_train=a.sizes[0], n_val=a.sizes[1], n_test=a.sizes[2],
                      seed=a.data_seed)
    out = {"command": " ".join(["python benchmarks/confirm_folds.py"] + (argv if argv is not None else sys.argv[1:])),
           "sizes": a.sizes, "epochs": a.epochs, "folds": a.folds, "data_seed": a.data_seed,
           "values": {}, "schemes": {}}
    t0 = time.perf_counter()
    for scheme, folds in (("seeds", 0), ("folds", a.folds)):
        table = {m: [] for m in METHODS}
        for r in range(a.repeats):
            for m in METHODS:
                table[m].append(best_val_es_auc(root, work / "cache", m, 1 + r, a.epochs, folds, r))
            print(f"[{scheme}] repeat {r}: " + "  ".join(f"{m} {table[m][-1]:.4f}" for m in METHODS)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        out["values"][scheme] = table
        out["schemes"][scheme] = scheme_stats(table, a.repeats)
    for scheme, s in out["schemes"].items():
        print(f"{scheme:6s}: sd plain fusion {s['sd_baseline']:.4f}, MultiFair {s['sd_full']:.4f}, "
              f"within-repeat correlation {s['rho']:+.2f}, sd of the paired difference {s['sd_diff']:.4f} "
              f"(mean {s['mean_diff']:+.4f}); 8 repeats detect {s['detectable_8_repeats']:+.3f}")
    ratio = out["schemes"]["folds"]["sd_diff"] / out["schemes"]["seeds"]["sd_diff"]
    out["sd_diff_ratio_folds_over_seeds"] = ratio
    out["repeats_for_equal_power"] = ratio ** 2   # repeats scale with the variance, n ~ sd^2
    print(f"sd of the paired difference, folds / seeds: {ratio:.2f} (about {ratio ** 2:.2f}x the repeats "
          f"for the same power); {time.perf_counter() - t0:.0f} s")
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(f"written {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
