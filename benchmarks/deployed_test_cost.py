"""What the decide stage's one scoring path saves (issue 29 item 3): the deployed model's test
split scored once for the paired test AND the robustness block, against the old path (the paired
test predicting both models, then a second scoring of the deployed model for the robustness
block, with the trainer's bootstrap it did not use). Both paths run in this process (the stage
runs each as one Ray task), interleaved, on the tiny preset on the CPU; the complete test passes
are counted through the trainer's inference path (Trainer.forward).

    PYTHONPATH=$PWD python benchmarks/deployed_test_cost.py --n-test 400 --repeats 3 \\
        --out benchmarks/results/deployed-test-cost-tiny-cpu.json

Needs no GPU and no data (a generated FairVision). The paper preset's figure is in docs/search.md
(a projection from docs/scaling.md's measured GPU step time)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def checkpoints(root: str, out: Path):
    """(plain fusion, MultiFair full) Tune Checkpoints of 1-epoch tiny fits."""
    from ray import tune

    from trainer.config import make_config
    from trainer.loop import fit

    cfg = make_config("fairvision", "gender", preset="tiny", data_root=root, epochs=1, evaluate_test=False)

    def fitted(mode: str):
        saved = {}
        fit(cfg.replace(mode=mode), progress=False,
            on_epoch=lambda r: saved.__setitem__("dir", r.save_checkpoint(out / mode, resume=False)))
        return tune.Checkpoint.from_directory(str(saved["dir"]))

    return fitted("baseline"), fitted("full")


def old_path(base, cand):
    """The paired test's two predictions, then the robustness block's own scoring."""
    from search.decide.paired import paired_bootstrap
    from search.decide.scoring import predict_test, score_checkpoint
    from search.record.summary import robustness_of

    preds = []
    for ckpt in (base, cand):
        with ckpt.as_directory() as d:
            preds.append(predict_test(d))
    (y, pa, g, names), (_, pb, _, _) = preds
    paired = paired_bootstrap(y, pa, pb, g, n=1000, seed=0, group_names=names)
    return {"paired": paired, "robustness": robustness_of(score_checkpoint(cand))}


def new_path(base, cand):
    from search.decide.scoring import deployed_test

    return deployed_test(base, cand, "chosen", n=1000, seed=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from trainer.data.synthetic import synthesize
    from trainer.loop import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="deployed-test-"))
    os.environ.setdefault("MULTIFAIR_CACHE", str(tmp / "cache"))
    root = synthesize("fairvision", tmp / "fv", n_train=64, n_val=32, n_test=a.n_test, seed=0)
    base, cand = checkpoints(str(root), tmp / "ckpt")

    passes, real = [], Trainer.forward

    def counted(self, split, encode=False):
        passes.append(split)
        return real(self, split, encode)

    Trainer.forward = counted
    paths = {"old": old_path, "new": new_path}
    times = {k: [] for k in paths}
    counts, results = {}, {}
    for r in range(a.repeats + 1):          # round 0 warms the caches up and is dropped
        for name, fn in paths.items():
            passes.clear()
            started = time.perf_counter()
            results[name] = fn(base, cand)
            if r:
                times[name].append(time.perf_counter() - started)
            counts[name] = passes.count("test")
    same = {k: results["old"]["paired"][k]["diff"] == results["new"]["paired"][k]["diff"]
            for k in ("auc", "es_auc", "worst_group_auc")}
    old_s, new_s = (statistics.median(times[k]) for k in ("old", "new"))
    report = {"preset": "tiny", "device": "cpu", "threads": a.threads, "n_test": a.n_test,
              "repeats": a.repeats, "complete_test_passes": counts, "median_s": {"old": old_s, "new": new_s},
              "all_s": times, "saved_s": old_s - new_s,
              "saved_ms_per_test_sample": 1000 * (old_s - new_s) / a.n_test,
              "paired_differences_equal": same, "load_avg_1min": os.getloadavg()[0]}
    print(json.dumps(report, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
