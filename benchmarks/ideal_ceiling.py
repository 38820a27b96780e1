"""The generator's known answer at scale: AUC, ES-AUC and per-group AUC of each ideal reader (OCT,
SLO, both) on N generated FairVision samples' latents (no images rendered), for race and gender.
docs/data.md, "The known answer", cites its output.

    python benchmarks/ideal_ceiling.py --n 60000 --seed 1 \
        --json benchmarks/results/ideal-ceiling-60k.json
    python benchmarks/ideal_ceiling.py --n 60000 --seed 1 --site shifted \
        --json benchmarks/results/ideal-ceiling-60k-shifted.json

`--site shifted`: the shifted site's population (trainer/data/acquisition.py SITES); its scanner
changes the pixels only, which the ideal reader sees through, so the ceiling moves with the group
mix alone.

`--world sensitive` (trainer/data/generative.py WORLDS): the OCT reader reads the protocol band
too, and "no shortcut" is the joint reader that ignores the band.

    python benchmarks/ideal_ceiling.py --n 60000 --seed 1 --world sensitive \
        --json benchmarks/results/ideal-ceiling-60k-sensitive.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import ATTRIBUTES  # noqa: E402
from trainer.data.acquisition import SITES  # noqa: E402
from trainer.data.generative import WORLDS  # noqa: E402
from trainer.data.ideal import evidence  # noqa: E402
from trainer.data.synthetic import synthesize_metadata  # noqa: E402
from trainer.metrics import evaluate_fairness  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default="")
    p.add_argument("--site", default="default", choices=sorted(SITES))
    p.add_argument("--world", default="default", choices=sorted(WORLDS))
    a = p.parse_args(argv)
    meta = synthesize_metadata("fairvision", a.n, seed=a.seed, site=a.site, world=a.world)
    ev = evidence("fairvision", meta, modalities=("oct", "slo"), site=a.site, world=a.world)
    y = np.asarray(meta["glaucoma"])
    out = {"args": vars(a), "readers": {}}
    readers = (("oct", "OCT"), ("slo", "SLO"), ("all", "both (joint)"),
               ("no_shortcut", "no shortcut"))
    for reader, label in (r for r in readers if r[0] in ev):
        score = rankdata(ev[reader]) / (len(y) + 1)   # ranks: sigmoid(log-odds) would tie at 1
        row = {}
        for attribute in ("race", "gender"):
            m = evaluate_fairness(y, score, np.asarray(meta[attribute]),
                                  group_names=ATTRIBUTES[attribute])
            row[attribute] = {"es_auc": m["es_auc"], "group_auc": m["group_auc"]}
            row["auc"] = m["auc"]
        out["readers"][label] = row
        groups = "  ".join(f"{g} {v:.3f}" for att in ("race", "gender")
                           for g, v in row[att]["group_auc"].items())
        print(f"{label:>13}: AUC {row['auc']:.3f}  race ES-AUC {row['race']['es_auc']:.3f}  "
              f"gender ES-AUC {row['gender']['es_auc']:.3f}  ({groups})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
