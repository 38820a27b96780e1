"""python -m search register: the champion of a finished study, registered from the command line.

    python -m search register --tracking-uri URI --experiment multifair-fairvision-gender \\
        --name multifair-fv-gender [--allow-unconfirmed] [--json out.json]

A study with a decision (a confirmation stage) registered its own champion when it ended: this
command reports that registration and never registers a second pick over it. A study without a
decision (no confirmation) has only its single-seed best (search.decide.select.single_seed_best):
no evidence that it beats the study's reference (plain fusion; CLIP for a vision-language mode,
search.record.reference), so it is refused unless --allow-unconfirmed, by the user's
choice. What a study's trials say about the hyperparameters (importances) is `python -m search
analyze`, which only reports.
"""
from __future__ import annotations

import argparse
import sys

from search.decide import select
from search.decide.registry import register_champion
from search.record import analysis
from search.record.reference import reference_of
from trainer.jsonout import dumps


def champion(trials, max_epochs: int, found: dict, name: str, tracking_uri: str,
             allow_unconfirmed: bool) -> tuple[int, dict]:
    """(exit code, report) of registering a study's champion (see the module docstring)."""
    decision = analysis.read_decision(found["study_dir"])
    if analysis.decided(decision) or found["chosen"]:
        dep = analysis.deployed(decision, found["chosen"])
        if dep.get("registered"):
            print(f"registered by the decision already: {dep['registered']}")
            return 0, {"deployment": dep, "registered": dep["registered"]}
        print(f"error: the decision deployed {dep['label']} but registered nothing; rerun the search "
              "with --resume to register it", file=sys.stderr)
        return 1, {"deployment": dep}
    pick = select.single_seed_best(trials, max_epochs)
    if pick is None:
        print("error: no decision recorded and no trial trained all epochs: nothing to register",
              file=sys.stderr)
        return 1, {}
    t, value = pick
    dep = {"source": "single-seed best (no decision recorded)", "trial_id": t["trial_id"],
           "run_id": t["run_id"], "val_es_auc": value, "params": t["params"]}
    if not allow_unconfirmed:   # no rule deploys without evidence
        print(f"error: no decision recorded for this study: its single-seed best ({t['trial_id']}, val "
              f"es_auc {value:.4f}) is not shown better than {reference_of(found['mode']).name}; run the "
              "search with --finalists K to decide, or pass --allow-unconfirmed to register it anyway",
              file=sys.stderr)
        return 1, {"deployment": dep}
    if not t["model_logged"]:
        print(f"error: run {t['run_id']} has no logged model (the search logs the best trial's)",
              file=sys.stderr)
        return 1, {"deployment": dep}
    register_champion(tracking_uri, f"runs:/{t['run_id']}/model", name)
    registered = f"models:/{name}@champion"
    print(f"registered {registered} (trial {t['trial_id']}, unconfirmed: by --allow-unconfirmed)")
    return 0, {"deployment": dep, "registered": registered}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--parent-run-id", default=None, help="default: the latest study run")
    p.add_argument("--name", required=True, help="registered model name (alias champion)")
    p.add_argument("--allow-unconfirmed", action="store_true",
                   help="a study without a decision: register its single-seed best anyway "
                        "(no evidence that it beats the study's reference: plain fusion, or CLIP)")
    p.add_argument("--json", default="", help="also write what was registered here")
    a = p.parse_args(argv)
    trials, max_epochs, _, found = analysis.trials_from_mlflow(a.tracking_uri, a.experiment, a.parent_run_id)
    code, report = champion(trials, max_epochs, found, a.name, a.tracking_uri, a.allow_unconfirmed)
    if a.json:
        with open(a.json, "w") as f:
            f.write(dumps(report, indent=1, default=str))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
