"""Re-log a finished or interrupted study from its Tune results folder into MLflow.

    python -m search.relog --results multifair-results/fairvision-gender-full \\
        --tracking-uri http://mlflow.example:5000

Ray's results folder is the source of truth (study.json, experiment_state-*.json, and per
trial params.json + result.json). Runs are found by their tags (study_dir, trial_id), so running
the command twice, or after a search that logged live, adds only what is missing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from search import study as S
from search.tracking import StudyTracker, check_tracking_uri, default_tracking_uri, git_commit, ui_hint


def relog(study_dir: str | Path, tracking_uri: str, experiment: str | None = None) -> StudyTracker:
    """Re-log a study folder; an s3:// (gs://) study is read through a temporary local copy."""
    if "://" in str(study_dir):
        import tempfile

        import pyarrow.fs

        with tempfile.TemporaryDirectory(prefix="multifair-relog-") as tmp:
            pyarrow.fs.copy_files(str(study_dir), tmp)
            return _relog(Path(tmp), tracking_uri, experiment)
    return _relog(Path(study_dir).resolve(), tracking_uri, experiment)


def _relog(study_dir: Path, tracking_uri: str, experiment: str | None) -> StudyTracker:
    study = S.read_study(str(study_dir))
    search = study["search"]
    base, sep, query = search["storage_path"].partition("?")
    recorded = f"{base.rstrip('/')}/{search['name']}{sep}{query}"   # runs are tagged with it
    check_tracking_uri(tracking_uri)
    tracker = StudyTracker(tracking_uri, experiment or search["experiment"], recorded,
                           artifact_root=str(study_dir.parent / "mlartifacts"))
    commit = git_commit()
    tracker.start_study(tags=S.study_tags(search, commit), params=S.study_params(search))
    tags = {**S.study_tags(search, commit), "relogged": "true"}
    max_epochs = int(search["max_epochs"])
    stopped = failed = 0
    for t in S.read_trials(study_dir):
        run_id = tracker.child(t["trial_id"], t["config"], tags, study["setup"]["base"])
        for row in t["results"]:
            tracker.log_epoch(run_id, row)
        epochs = max((int(r.get("epoch", 0)) for r in t["results"]), default=0)
        status = S.STATUS.get(t["tune_status"], "KILLED")
        tracker.end_trial(run_id, status, epochs, max_epochs)
        stopped += status == "FINISHED" and epochs < max_epochs
        failed += status == "FAILED"
    tracker.end_study("FINISHED", tags={"trials_stopped_early": stopped, "trials_failed": failed})
    return tracker


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True,
                   help="the study folder (<storage-path>/<name>), local or s3://bucket/path/<name>")
    p.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite next to the study")
    p.add_argument("--experiment", default=None, help="default: the study's own experiment name")
    a = p.parse_args(argv)
    local = "://" not in a.results
    uri = a.tracking_uri or default_tracking_uri(Path(a.results).resolve().parent if local else ".")
    tracker = relog(a.results, uri, a.experiment)
    command, url = ui_hint(uri, tracker.experiment_id)
    print(f"re-logged {a.results} into {uri}: experiment {tracker.experiment_id}, "
          f"parent run {tracker.parent_run_id}\nopen the UI: {command}\n  runs table: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
