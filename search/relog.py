"""Re-log a finished or interrupted study from its Tune results folder into MLflow.

    python -m search.relog --results multifair-results/fairvision-gender-full \\
        --tracking-uri http://mlflow.example:5000

Ray's results folder is the source of truth (study.json, experiment_state-*.json, and per
trial params.json + result.json). Runs are found by their tags (study_dir, trial_id), so running
the command twice, or after a search that logged live, adds only what is missing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from search.tracking import StudyTracker, check_tracking_uri, default_tracking_uri, ui_hint

STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}   # others: interrupted -> KILLED


def read_trials(study_dir: Path) -> list[dict]:
    """Every trial of a study folder: id, config, per-epoch results, Tune status."""
    statuses = {}
    states = sorted(study_dir.glob("experiment_state-*.json"))
    if states:
        for json_state, _ in json.loads(states[-1].read_text())["trial_data"]:
            state = json.loads(json_state)
            statuses[state["trial_id"]] = state["status"]
    trials = []
    for params_file in sorted(study_dir.glob("*/params.json")):
        folder = params_file.parent
        result_file = folder / "result.json"
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()] \
            if result_file.exists() else []
        trial_id = rows[0]["trial_id"] if rows else folder.name.removeprefix("trial_")
        status = statuses.get(trial_id, "ERROR" if (folder / "error.txt").exists() else "UNKNOWN")
        trials.append({"trial_id": trial_id, "config": json.loads(params_file.read_text()),
                       "results": rows, "tune_status": status, "path": str(folder)})
    return trials


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
    from search.runner import STUDY_FILE, study_params, study_tags, SearchConfig

    study = json.loads((study_dir / STUDY_FILE).read_text())
    fields = {k: v for k, v in study["search"].items() if k in SearchConfig.__dataclass_fields__}
    fields["synthetic_sizes"] = tuple(fields.get("synthetic_sizes", (0, 0, 0)))
    scfg = SearchConfig(**fields)
    check_tracking_uri(tracking_uri)
    tracker = StudyTracker(tracking_uri, experiment or scfg.experiment, scfg.study_dir,
                           artifact_root=str(study_dir.parent / "mlartifacts"))
    tracker.start_study(tags=study_tags(scfg), params=study_params(scfg))
    tags = {**study_tags(scfg), "relogged": "true"}
    stopped = failed = 0
    for t in read_trials(study_dir):
        run_id = tracker.child(t["trial_id"], t["config"], tags, study["setup"]["base"])
        for row in t["results"]:
            tracker.log_epoch(run_id, row)
        epochs = max((int(r.get("epoch", 0)) for r in t["results"]), default=0)
        status = STATUS.get(t["tune_status"], "KILLED")
        tracker.end_trial(run_id, status, epochs, scfg.max_epochs)
        stopped += status == "FINISHED" and epochs < scfg.max_epochs
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
