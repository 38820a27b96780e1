"""Resume after a SIGKILLed driver without re-running trials that had finished.

Tune restores from its last experiment-state snapshot, written at most every
TUNE_GLOBAL_CHECKPOINT_S seconds (stack.md). A trial that finished after that snapshot comes
back as RUNNING at an earlier epoch: Tune restarts it, from a checkpoint the checkpoint manager
may already have deleted ("Could not recover from checkpoint as it does not exist on storage
anymore", seen on S3 with 1 s epochs), and its MLflow run turns from FINISHED to FAILED.
MLflow knows better: the driver ends a trial's run only after Tune reported it complete. Before
restoring, trials whose MLflow run is FINISHED are marked TERMINATED in the newest snapshot.
What Tune still holds for them is their last snapshotted result; MLflow has every epoch.
"""
from __future__ import annotations

import json
import posixpath


def _newest_state(fs, path: str) -> str | None:
    import pyarrow.fs

    infos = fs.get_file_info(pyarrow.fs.FileSelector(path))
    states = sorted(i.path for i in infos if posixpath.basename(i.path).startswith("experiment_state-")
                    and i.path.endswith(".json"))
    return states[-1] if states else None


def settle_finished_trials(study_dir: str, finished: set[str]) -> list[str]:
    """Mark `finished` trials TERMINATED in Tune's newest snapshot; returns the ids changed."""
    import pyarrow.fs

    if not finished:
        return []
    fs, path = pyarrow.fs.FileSystem.from_uri(study_dir)
    newest = _newest_state(fs, path)
    if newest is None:
        return []
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.read().decode())
    changed = []
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        if trial["trial_id"] in finished and trial["status"] not in ("TERMINATED", "ERROR"):
            trial["status"] = "TERMINATED"
            entry[0] = json.dumps(trial)
            changed.append(trial["trial_id"])
    if changed:
        with fs.open_output_stream(newest) as f:
            f.write(json.dumps(state).encode())
        print(f"[search] resume: trials {', '.join(sorted(changed))} finished after Tune's last "
              "snapshot (MLflow has them FINISHED): not re-run", flush=True)
    return changed
