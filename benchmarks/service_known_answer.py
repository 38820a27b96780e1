"""The whole service against a known answer (issue 27, item 3): the real search, confirmation
and rule, run again and again on freshly generated worlds, and how often it deploys what.

Each run generates its own dataset (seed 1000 + run, apart from every search and training seed)
in the released layout, then runs the service as `make demo` does (search.runner.run_search:
Optuna TPE + MO-ASHA Pareto search, finalists confirmed over fresh seeds beside the paper's
point and plain fusion, the rule at familywise error --alpha, the test split once), with its own
MLflow store. Recorded per run: what was deployed (plain fusion or a MultiFair candidate), the
candidate's hyperparameters, the paired test difference in ES-AUC against plain fusion, wall time.

The known answer: in the default (flat) world the searched hyperparameters matter no more than
the seed (docs/search-quality.md), so no MultiFair setting is truly better than plain fusion and
a sound service deploys plain fusion in at least 1 - alpha of the runs (goal >= 95%). A
candidate deployed there is a false deployment; its rate is reported with a Wilson interval.

    python benchmarks/service_known_answer.py --runs 20 --out benchmarks/results/service-known-answer-flat.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def one_run(run: int, a, work: Path) -> dict:
    from search.runner import SearchConfig, run_search
    from trainer.data.synthetic import synthesize

    n_train, n_val, n_test = (int(x) for x in a.sizes.split(","))
    extra = {} if a.world == "default" else {"world": a.world}
    data = synthesize("fairvision", work / f"data-{run}", n_train=n_train, n_val=n_val, n_test=n_test,
                      seed=1000 + run, **extra)
    scfg = SearchConfig(
        "fairvision", a.attribute, preset="tiny", data_root=str(data), objective="pareto",
        num_samples=a.num_samples, max_epochs=a.max_epochs, grace_period=1, finalists=a.finalists,
        confirm_seeds=a.confirm_seeds, alpha=a.alpha, max_concurrent=a.cpus, cpus_per_trial=1,
        local=True, num_cpus=a.cpus, seed=run, storage_path=str(work / "results"), name=f"run-{run}",
        tracking_uri="sqlite:///" + str(work / f"mlflow-{run}.db"), figures=False, verbose=0)
    started = time.time()
    outcome = run_search(scfg)
    decision = outcome.decision or {}
    choice = (decision.get("confirmation") or {}).get("choice") or {}
    test = decision.get("test") or {}
    return {"run": run, "data_seed": 1000 + run, "deployed": choice.get("label"),
            "candidate_deployed": bool(choice.get("label")) and choice.get("label") != "baseline",
            "params": ((decision.get("confirmation") or {}).get("candidates") or {}).get(choice.get("label")),
            "reason": choice.get("reason"), "error": choice.get("error") or outcome.stop_message or None,
            "test_es_auc_diff": (test.get("es_auc") or {}).get("diff"),
            "test_compared": test.get("candidate"), "wall_s": time.time() - started}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--world", default="default", help="the generator's world (default: flat)")
    p.add_argument("--attribute", default="gender")
    p.add_argument("--sizes", default="384,192,192", help="train,val,test samples per generated world")
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--finalists", type=int, default=2)
    p.add_argument("--confirm-seeds", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")   # loopback only (stack.md)
    rows = []
    with tempfile.TemporaryDirectory(prefix="service-known-answer-") as tmp:
        for run in range(a.runs):
            rows.append(one_run(run, a, Path(tmp)))
            r = rows[-1]
            print(f"run {run}: deployed {r['deployed']}  test es_auc diff {r['test_es_auc_diff']}  "
                  f"{r['wall_s']:.0f} s", flush=True)
            decided = [x for x in rows if x["deployed"]]
            k = sum(x["candidate_deployed"] for x in decided)
            summary = {"world": a.world, "runs": len(rows), "decided": len(decided),
                       "candidate_deployed": k, "baseline_deployed": len(decided) - k,
                       "baseline_share": (len(decided) - k) / len(decided) if decided else None,
                       "candidate_share_95ci": wilson(k, len(decided)),
                       "goal": "flat world: plain fusion deployed in >= 95% of decided runs"}
            Path(a.out).write_text(json.dumps({"args": vars(a), "summary": summary, "runs": rows}, indent=1,
                                              default=str))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
