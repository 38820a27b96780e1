"""Resume after a SIGKILLed driver: repair Tune's last snapshot before restoring it.

Tune restores a study from its newest experiment-state snapshot, written at most every
TUNE_GLOBAL_CHECKPOINT_S seconds (stack.md) and later than that on a loaded machine: seen here,
a snapshot two epochs behind its trials. Meanwhile the checkpoint manager keeps only the newest
checkpoints of each trial, so the snapshot can name a checkpoint already deleted; Tune then fails
the trial on every retry ("Could not recover from checkpoint as it does not exist on storage
anymore"). Before `Tuner.restore`, each trial whose recorded checkpoint is gone is pointed at the
newest complete checkpoint in its folder (none left: it starts over). The trainable then moves
on to the newest checkpoint if an even newer one exists (search.run.trainable.newest_checkpoint), so
a trial that had finished trains nothing again.
"""
from __future__ import annotations

import json
import posixpath

import pyarrow.fs
from ray import tune
from ray.train._internal.session import _TrainingResult
from ray.tune.utils.serialization import TuneFunctionEncoder, _loads_with_cloudpickle

from search.run.trainable import newest_checkpoint


def _exists(fs, path: str) -> bool:
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _newest_state(fs, path: str) -> str | None:
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path))
    states = sorted(i.path for i in infos if posixpath.basename(i.path).startswith("experiment_state-")
                    and i.path.endswith(".json"))
    return states[-1] if states else None


def _repair(manager) -> bool:
    """Point a trial's checkpoint manager at checkpoints that exist; True if it changed."""
    latest = manager.latest_checkpoint_result if manager else None
    if latest is None or latest.checkpoint is None:
        return False
    fs, path = latest.checkpoint.filesystem, latest.checkpoint.path
    if _exists(fs, path):
        return False
    kept = [r for r in manager._checkpoint_results if r.checkpoint and _exists(fs, r.checkpoint.path)]
    newest, _ = newest_checkpoint(latest.checkpoint, need_state=False)   # complete folders only
    found = newest.path if newest is not None else None
    replacement = None
    if found is not None:
        replacement = next((r for r in kept if r.checkpoint.path == found), None) or \
            _TrainingResult(tune.Checkpoint(path=found, filesystem=fs), dict(latest.metrics))
        kept = [r for r in kept if r is not replacement] + [replacement]
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = replacement
    return True


def repair_stale_checkpoints(study_dir: str) -> list[str]:
    """Fix the newest snapshot of `study_dir` in place; returns the trial ids repaired."""
    fs, path = pyarrow.fs.FileSystem.from_uri(study_dir)
    newest = _newest_state(fs, path)
    if newest is None:
        return []
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.read().decode())
    repaired = []
    for entry in state["trial_data"]:
        meta = _loads_with_cloudpickle(entry[1])
        if _repair(meta.get("checkpoint_manager")):
            entry[1] = json.dumps(meta, indent=2, cls=TuneFunctionEncoder)
            repaired.append(json.loads(entry[0])["trial_id"])
    if repaired:
        with fs.open_output_stream(newest) as f:
            f.write(json.dumps(state).encode())
        print(f"[search] resume: the last snapshot named deleted checkpoints of trials "
              f"{', '.join(repaired)}: pointed at their newest checkpoint on storage", flush=True)
    return repaired
