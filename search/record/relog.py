"""Re-log a finished or interrupted study from its Tune results folder into MLflow.

    python -m search.record.relog --results multifair-results/fairvision-gender-full \\
        --tracking-uri http://mlflow.example:5000

Ray's results folder is the source of truth (study.json, experiment_state-*.json, and per
trial params.json + result.json). Runs are found by their tags (study_dir, trial_id), so running
the command twice, or after a search that logged live, adds only what is missing. The
confirmation stage's runs (the sibling Tune folder `<study>-confirm`, its candidates from the
study's decision.json) are re-logged the same way, named and tagged as the live search names them
(`confirm-<candidate>-seed<s>`, run_kind confirm).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.fs

from search.record import study as S
from search.record.study import CONFIRM
from search.record.tracking import (StudyTracker, check_tracking_uri, default_tracking_uri, git_commit,
                             stage_run, ui_hint)


def relog(study_dir: str | Path, tracking_uri: str, experiment: str | None = None,
          filesystem=None, pending: str | None = None) -> StudyTracker:
    """Re-log a study folder: a local path, an s3:// (gs://) URI, or a path inside `filesystem`
    (a pyarrow filesystem). Only JSON files are read, in place (search.record.study.read_trials): the
    study's checkpoints (tens of GiB for 100 trials) are never opened or copied. `pending`: a
    file of MLflow operations a search could not log (its server was down at the end), replayed
    before the trials' results (tags such as retries and nodes, which the results folder lacks)."""
    if filesystem is None and "://" not in str(study_dir):
        study_dir = str(Path(study_dir).resolve())
    fs, path = S.study_fs(study_dir, filesystem)
    study = S.read_study(path, fs)
    search = study["search"]
    recorded = S.stage_path(search["storage_path"], search["name"])   # runs are tagged with it
    check_tracking_uri(tracking_uri)
    local = isinstance(fs, pyarrow.fs.LocalFileSystem)
    results = Path(path).parent if local else Path("multifair-results").resolve()
    tracker = StudyTracker(tracking_uri, experiment or search["experiment"], recorded,
                           artifact_root=str(results / "mlartifacts"))
    commit = git_commit()
    tracker.start_study(tags=S.study_tags(search, commit), params=S.study_params(search))
    tags = {**S.study_tags(search, commit), "relogged": "true"}
    max_epochs, base = int(search["max_epochs"]), study["setup"]["base"]
    if pending:   # first: its epochs are new to the store, so none counts as trained twice

        # Ray Tune (the callback's base class, about 1 s) only to replay a pending file
        from search.record.trial_callback import MLflowTrialCallback

        MLflowTrialCallback.replay(tracker, json.loads(Path(pending).read_text()))
    stopped = failed = 0
    for t in S.read_trials(path, fs):
        status, epochs = _log_trial(tracker, t, t["config"], tags, base, max_epochs)
        stopped += status == "FINISHED" and epochs < max_epochs
        failed += status == "FAILED"
    confirmed = _relog_confirmation(tracker, fs, path, search, tags, base, max_epochs)
    tracker.end_study("FINISHED", tags={"trials_stopped_early": stopped, "trials_failed": failed,
                                        **({"confirmation_runs": confirmed} if confirmed else {})})
    return tracker


def _log_trial(tracker, t: dict, config: dict, tags: dict, base: dict, max_epochs: int,
               run_name: str | None = None) -> tuple[str, int]:
    run_id = tracker.child(t["trial_id"], config, tags, base, run_name=run_name)
    for row in t["results"]:
        tracker.log_epoch(run_id, row)
    epochs = max((int(r.get("epoch", 0)) for r in t["results"]), default=0)
    status = S.STATUS.get(t["tune_status"], "KILLED")
    tracker.end_trial(run_id, status, epochs, max_epochs)
    return status, epochs


def _relog_confirmation(tracker, fs, study_path: str, search: dict, tags: dict, base: dict,
                        max_epochs: int) -> int:
    """The confirmation stage's runs, as search.decide.confirm.grid_run's MLflow callback logs them;
    the number re-logged (0 when the study had no confirmation stage)."""
    folder = f"{study_path}-{CONFIRM}"
    try:
        decision = S.read_json(study_path, S.DECISION_FILE, fs)
    except (FileNotFoundError, OSError):
        decision = {}
    cands = (decision.get("confirmation") or {}).get("candidates") or {}
    if not cands or not S.is_dir(folder, fs):
        return 0
    stage_tags = {**tags, "run_kind": CONFIRM, "stage": CONFIRM, "dataset": search["dataset"],
                  "attribute": search["attribute"]}
    n = 0
    for t in S.read_trials(folder, fs):
        label, seed = t["config"].get("candidate"), t["config"].get("seed")
        if label not in cands:
            raise ValueError(f"{t['path']}: candidate {label!r} is not among "
                             f"{S.DECISION_FILE}'s confirmation candidates {sorted(cands)}")
        config, run_tags, name = stage_run(CONFIRM, label, cands[label], seed, stage_tags)
        _log_trial(tracker, t, config, run_tags, base, max_epochs, run_name=name)
        n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True,
                   help="the study folder (<storage-path>/<name>), local or s3://bucket/path/<name>")
    p.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite next to the study")
    p.add_argument("--experiment", default=None, help="default: the study's own experiment name")
    p.add_argument("--pending", default=None, metavar="FILE",
                   help="also replay the MLflow operations a search wrote to FILE when its server was "
                        "down at the end (mlflow-unlogged-*.json; the search prints its name)")
    a = p.parse_args(argv)
    local = "://" not in a.results
    uri = a.tracking_uri or default_tracking_uri(Path(a.results).resolve().parent if local else ".")
    tracker = relog(a.results, uri, a.experiment, pending=a.pending)
    command, url = ui_hint(uri, tracker.experiment_id)
    print(f"re-logged {a.results} into {uri}: experiment {tracker.experiment_id}, "
          f"parent run {tracker.parent_run_id}\nopen the UI: {command}\n  runs table: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
