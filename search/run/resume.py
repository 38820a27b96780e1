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

The snapshot's trials and the search algorithm's state are two files, written and uploaded one
after the other: a driver killed between them leaves a state that disagrees with the trials. A
count of created trials ahead of them (a trial created after the trials were saved) made the
resumed search believe it had sampled every trial and end one short, "INTERRUPTED" on every
--resume (seen in the multi-node SIGKILL test); a count behind them samples more trials than asked;
a concurrency slot held by a trial the snapshot lacks is never freed. Before `Tuner.restore`,
reconcile_trial_count makes that state agree with the snapshot (repair_after_kill runs both repairs
from one read of it); the Optuna searcher fails the lost trial on restore
(search.run.objectives.WarmOptunaSearch).
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


def _newest_state(fs, path: str, prefix: str = "experiment_state-") -> str | None:
    """The newest of Tune's `prefix`*.json files in `path` (Tune picks the greatest name too)."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path))
    states = sorted(i.path for i in infos if posixpath.basename(i.path).startswith(prefix)
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


def _read_snapshot(fs, path: str) -> tuple[str | None, dict | None]:
    """(file, parsed state) of the newest snapshot in `path`; (None, None) without one."""
    newest = _newest_state(fs, path)
    if newest is None:
        return None, None
    with fs.open_input_stream(newest) as f:
        return newest, json.loads(f.read().decode())


def _trials_of(state: dict) -> dict[str, str]:
    trials = (json.loads(entry[0]) for entry in state["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def repair_after_kill(study_dir: str) -> None:
    """Both repairs before `Tuner.restore`, from one read of the newest snapshot (about 50 KB a
    trial: 5 MB at 100 trials on S3)."""
    fs, path = pyarrow.fs.FileSystem.from_uri(study_dir)
    newest, state = _read_snapshot(fs, path)
    if state is None:
        return
    repair_stale_checkpoints(fs, newest, state)   # a killed driver's snapshot can lag its trials
    reconcile_trial_count(study_dir, held=_trials_of(state))   # ... and disagree with the searcher


def repair_stale_checkpoints(fs, newest: str, state: dict) -> list[str]:
    """Fix the snapshot `newest` (parsed: `state`) in place; returns the trial ids repaired."""
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


def snapshot_trials(study_dir: str) -> dict[str, str] | None:
    """{trial id: Tune status} of the newest snapshot of `study_dir` (a folder or a storage URI);
    None without one."""
    _, state = _read_snapshot(*pyarrow.fs.FileSystem.from_uri(study_dir))
    return None if state is None else _trials_of(state)


ENDED = ("TERMINATED", "ERROR")   # a restored trial in these is never reported complete again


def reconcile_trial_count(study_dir: str, held: dict[str, str] | None = None) -> list[str]:
    """Make the search algorithm's saved state (Ray's SearchGenerator state, the newest
    search_gen_state-*.json) agree with the trials of the newest snapshot: its count of created
    trials becomes theirs, and the concurrency limiter's live trials only those the snapshot holds
    unfinished (a trial it does not hold never completes: the limiter would keep its slot for
    good, and with one slot the resumed search would wait forever). `held`: the snapshot's
    trials where the caller has read them (snapshot_trials). Returns what it changed."""
    import ray.cloudpickle as cloudpickle

    held = snapshot_trials(study_dir) if held is None else held
    fs, path = pyarrow.fs.FileSystem.from_uri(study_dir)
    saved = _newest_state(fs, path, "search_gen_state-")
    if held is None or saved is None:
        return []
    with fs.open_input_stream(saved) as f:
        state = cloudpickle.loads(f.read())
    changed = []
    if state["counter"] != len(held):
        changed.append(f"{state['counter']} trial(s) counted as created, {len(held)} held: "
                       f"counted {len(held)}, so the study samples up to its number of trials")
        state["counter"] = len(held)
    limiter = state.get("name:ConcurrencyLimiter")
    if limiter is not None:
        live = {t for t in limiter["live_trials"] if held.get(t, "TERMINATED") not in ENDED}
        if live != limiter["live_trials"]:
            gone = sorted(limiter["live_trials"] - live)
            changed.append(f"trial(s) {', '.join(gone)} held a concurrency slot but will not run "
                           "again: slot(s) freed")
            limiter["live_trials"], limiter["num_unfinished_live_trials"] = live, len(live)
    if not changed:
        return []
    staged = posixpath.join(path, ".reconciled-" + posixpath.basename(saved))
    with fs.open_output_stream(staged) as f:   # written whole, then moved over the old one
        f.write(cloudpickle.dumps(state))
    fs.move(staged, saved)
    for line in changed:
        print(f"[search] resume: the saved search state disagreed with the last snapshot: {line}",
              flush=True)
    return changed
