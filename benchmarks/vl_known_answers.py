"""Known answers of the vision-language family on generated FairVLMed (tiny preset, CPU):

1. zero-shot AUC after fine-tuning `clip` on the summaries of data written with
   `--note-diagnosis` (the prompts' words, more often for men): above chance, and higher for men;
2. `fairclip_dbpm`'s recovery of the planted bad pairs (`--bad-pairs 0.1`): precision and recall
   per epoch after the warm-up (goal: recall >= 0.8 at precision >= 0.5), the notes as text (the
   summaries do not name the eye, which is what makes a planted note visibly wrong).

    python benchmarks/vl_known_answers.py --out benchmarks/results/vl-known-answers.json

Trainer only (no Ray, no MLflow); about 15 minutes on a loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from trainer.config import make_config
from trainer.data.synthetic import synthesize
from trainer.loop import fit


def run(root: Path, cache: Path, mode: str, epochs: int, sets: list[str]) -> dict:
    cfg = make_config("fairvlmed", "gender", preset="tiny", mode=mode, data_root=str(root),
                      cache_dir=str(cache), epochs=epochs, device="cpu",
                      sets=["bootstrap=0"] + sets)
    result = fit(cfg, progress=False)
    point = result["test"]["point"]
    return {"mode": mode, "sets": sets, "epochs": epochs, "best_epoch": result["best_epoch"],
            "test": {k: point[k] for k in ("auc", "es_auc", "group_auc")},
            "linear_probe_test_auc": result["test"].get("linear_probe", {}).get("test", {})
            .get("auc"), "bad_pairs": result["test"].get("bad_pairs"),
            "recovery": [{k: h[k] for k in ("epoch", "train/dbpm_flagged",
                                            "train/dbpm_precision", "train/dbpm_recall")}
                         for h in result["history"] if "train/dbpm_recall" in h]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file for the figures")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vl-known-") as tmp:
        root = synthesize("fairvlmed", Path(tmp) / "vl", n_train=args.n_train, n_val=120,
                          n_test=160, seed=args.seed, bad_pairs=0.1, note_diagnosis=True)
        cache = Path(tmp) / "cache"
        runs = [run(root, cache, "clip", 8, []),
                run(root, cache, "fairclip_dbpm", 20,
                    ["note_source=note", "dbpm_beta_fp=1", "dbpm_warmup_epochs=4",
                     "linear_probe=false"])]
    for r in runs:
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
