"""python -m search.decide --table runs.csv [more.csv ...] [--alpha 0.05] [--min-gain 0.0]
[--baseline baseline] [--min-auc-drop X]: one JSON line per table (in order) on stdout, each
the rule's decision with its evidence (search/decide/rule.py); a one-line error and rc 2 for a
table it cannot read."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.decide", description=__doc__.split(":")[0])
    p.add_argument("--table", nargs="+", required=True, help="CSV file(s): candidate, repeat, val_auc, "
                   "val_es_auc (one row per candidate x repeat; the same repeat id = paired)")
    p.add_argument("--alpha", type=float, default=0.05, help="familywise error over all candidates")
    p.add_argument("--min-gain", type=float, default=0.0, help="validation ES-AUC gain to beat")
    p.add_argument("--baseline", default="baseline", help="the baseline's candidate label")
    p.add_argument("--min-auc-drop", type=float, default=None,
                   help="candidates with mean val AUC below the baseline's minus X are ineligible")
    a = p.parse_args(argv)
    import pandas as pd

    from search.decide.rule import BadTable, decide_table
    from trainer.jsonout import dumps

    for path in a.table:
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            print(f"error: {path}: cannot read the table: {exc}", file=sys.stderr)
            return 2
        try:
            d = decide_table(df, a.alpha, a.min_gain, a.baseline, a.min_auc_drop, name=path)
        except BadTable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(d["reason"], file=sys.stderr)
        print(dumps(d, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
