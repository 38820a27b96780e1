"""Command line: `python -m trainer synthesize ...`, `... audit ...`, `... fit ...` and
`... ceiling ...` (ideal-reader ceiling of generated data)."""
from __future__ import annotations

import argparse
import sys

from trainer.config import DATASETS, PRESETS
from trainer.methods import available_methods


def _fit_parser(sub) -> None:
    p = sub.add_parser("fit", help="train one MultiFair model; prints one JSON line at the end")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--shift-root", help="data root of another site in the same layout: its test "
                   "split is scored beside the same-site test (test.shift in the JSON)")
    p.add_argument("--attribute", default="gender",
                   help="gender | race | ethnicity | language | maritalstatus")
    p.add_argument("--mode", choices=available_methods(), default="full",
                   help="training method (docs/methods.md)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--modalities", help="comma-separated, e.g. slo,oct,note; one (e.g. slo) "
                   "trains a unimodal model")
    p.add_argument("--config", help="JSON file of config fields")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (repeatable)")
    p.add_argument("--out", help="directory for the final checkpoint and result.json")
    p.add_argument("--resume", help="checkpoint directory to continue from")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="go on past samples with identical images (reported by the data audit)")


def _audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="check every file of a dataset (building the cache a fit "
                       "with the same settings uses) and print its dataset card")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--attribute", help="warn for this attribute only (default: every attribute)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="preprocessing sizes of the cache built (use the fit's preset)")
    p.add_argument("--modalities", help="comma-separated, e.g. slo,oct,note")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="report samples with identical images instead of refusing them")


def _run_audit(args) -> int:
    from trainer.config import make_config
    from trainer.data import audit_dataset
    from trainer.data.audit import AuditError, render_card

    try:
        cfg = make_config(args.dataset, args.attribute or "gender", preset=args.preset,
                          sets=args.set, data_root=args.data_root, modalities=args.modalities,
                          allow_duplicates=args.allow_duplicates or None)
        report = audit_dataset(cfg, attribute=args.attribute)
    except AuditError as exc:
        for line in exc.defects:
            print(f"defect: {line}", file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:   # DataError and config errors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_card(report["card"], [args.attribute] if args.attribute else None))
    for line in report["warnings"]:
        print(f"warning: {line}")
    print(f"audit passed: every file checked; card saved to {report['card_path']} "
          f"(and .json beside it)")
    return 0


def _ceiling_parser(sub) -> None:
    p = sub.add_parser("ceiling", help="per-group AUC of the ideal readers of generated data "
                       "(reads <data-root>/ideal_reader.csv written by synthesize)")
    p.add_argument("--dataset", choices=DATASETS, default="fairvision")
    p.add_argument("--data-root", required=True)
    p.add_argument("--attribute", default="race")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", help="JSON file (default <data-root>/ceiling_<attribute>_<split>.json)")
    p.add_argument("--shift-root", help="another generated site (synthesize --site shifted): its "
                   "ceiling too, under the JSON key 'shift'")


def _run_fit(args) -> int:
    import json
    from pathlib import Path

    from trainer.config import make_config
    from trainer.data import DataError
    from trainer.jsonout import dumps
    from trainer.loop import fit, result_json

    try:
        cfg = make_config(args.dataset, args.attribute, preset=args.preset,
                          config_file=args.config, sets=args.set, data_root=args.data_root,
                          mode=args.mode, epochs=args.epochs, seed=args.seed,
                          modalities=args.modalities, shift_root=args.shift_root,
                          allow_duplicates=args.allow_duplicates or None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = {}
    on_epoch = None
    if args.out:
        def on_epoch(report):  # keep the latest full state so an interrupted fit can --resume
            last["dir"] = report.save_checkpoint(Path(args.out) / "checkpoint")
    try:
        result = fit(cfg, on_epoch=on_epoch, resume_from=args.resume,
                     progress=not args.no_progress)
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = result_json(result)
    if args.out:
        Path(args.out, "result.json").write_text(dumps(json.loads(line), indent=2))
        for name, rows in result.get("private", {}).items():   # file names: never printed
            write_rows(Path(args.out, f"{name}.csv"), rows)
    print(line)
    return 0


def write_rows(path, rows: list[dict]) -> None:
    """A CSV of dict rows (a header alone when there are none)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["filename"])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from trainer.data import synthetic

    synthetic.add_arguments(sub.add_parser("synthesize", help="write a generated dataset in the "
                                           "released on-disk format"))
    _audit_parser(sub)
    _fit_parser(sub)
    _ceiling_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "synthesize":
        try:
            return synthetic.run(args) or 0
        except ValueError as exc:   # a bad flag value: one line naming it
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "ceiling":
        from trainer.data.ideal import run_ceiling
        try:
            return run_ceiling(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _run_audit(args) if args.command == "audit" else _run_fit(args)


if __name__ == "__main__":
    sys.exit(main())
