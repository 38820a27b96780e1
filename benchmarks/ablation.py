"""Ablation on generated data: baseline / modality / fairness / full, for gender and race.

For each seed a FairVision-layout dataset is generated with that seed, and each mode is trained
with that seed (tiny preset unless --preset paper); the epoch is chosen on validation ES-AUC and
the test split is scored once. Prints a Markdown table of mean +- std over seeds and writes every
run's numbers to OUT/ablation.json. Trainer only: no Ray, no MLflow.

    python benchmarks/ablation.py --seeds 0 1 2 --epochs 6 --out results/ablation
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from trainer.config import ATTRIBUTES, MODES, make_config
from trainer.data.synthetic import synthesize
from trainer.jsonout import dumps
from trainer.loop import fit


def run(args) -> list[dict]:
    rows = []
    for seed in args.seeds:
        root = Path(args.out) / f"data-seed{seed}"
        if not root.exists():
            synthesize("fairvision", root, n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, seed=seed)
        for attribute in args.attributes:
            for mode in args.modes:
                cfg = make_config("fairvision", attribute, preset=args.preset, data_root=str(root),
                                  mode=mode, seed=seed, epochs=args.epochs,
                                  cache_dir=str(Path(args.out) / "cache"), sets=args.set)
                t0 = time.perf_counter()
                res = fit(cfg, progress=False)
                test = res["test"]["point"]
                row = {"seed": seed, "attribute": attribute, "mode": mode,
                       "best_epoch": res["best_epoch"], "seconds": time.perf_counter() - t0,
                       "val_es_auc": res["val"]["es_auc"], "auc": test["auc"],
                       "es_auc": test["es_auc"], "dpd": test["dpd"], "deodds": test["deodds"],
                       **{f"auc/{g}": v for g, v in test["group_auc"].items()},
                       "trigger_rate": res["history"][-1].get("mod/trigger_rate")}
                rows.append(row)
                print(dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], attribute: str) -> str:
    groups = list(ATTRIBUTES[attribute].values())
    cols = ["auc", "es_auc"] + [f"auc/{g}" for g in groups] + ["dpd", "deodds"]
    lines = ["| mode | " + " | ".join(c.replace("auc/", "AUC ") for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for mode in MODES:
        sel = [r for r in rows if r["attribute"] == attribute and r["mode"] == mode]
        if not sel:
            continue
        cells = []
        for c in cols:
            v = np.array([r.get(c, np.nan) for r in sel], dtype=float) * 100
            cells.append(f"{np.nanmean(v):.1f} ± {np.nanstd(v):.1f}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--attributes", nargs="+", default=["gender", "race"])
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=480)
    p.add_argument("--n-val", type=int, default=160)
    p.add_argument("--n-test", type=int, default=320)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default="results/ablation")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = run(args)
    Path(args.out, "ablation.json").write_text(dumps(rows, indent=1))
    for attribute in args.attributes:
        print(f"\n### {attribute} (test, model chosen on validation ES-AUC; x100, mean ± std over "
              f"seeds {args.seeds})\n")
        print(table(rows, attribute))


if __name__ == "__main__":
    main()
