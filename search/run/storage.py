"""What a finished trial keeps on storage: its best model, not its exact-resume state.

A resume checkpoint holds `state.pt` (fp32 weights, both AdamW optimisers' moments, RNG: about
2 GiB at the paper preset) beside the bf16 best model (`best_model.safetensors`, about 0.34 GiB).
Once Tune has ended a trial (all epochs trained, or stopped by ASHA) nothing resumes it again, so
`ResumeStatePruner` (a driver-side Tune callback) deletes the state of every checkpoint folder of
that trial and keeps the best model, which the decision, the test split and the registry read.
A trial that errored is left alone: Tune retries it, or `--resume` does (resume_errored=True),
from that very state. A trial still running or paused when the search is interrupted is left
alone too. Storage is reached through the trial's own filesystem (local, NFS or s3://, pyarrow).

Order inside a folder: the manifest is rewritten first (resume false, state.pt no longer listed)
and the state deleted after, so a folder is complete (trainer/checkpoint.py) at every moment; a
driver killed in between leaves a complete folder with a stray state.pt, removed by the next
prune (`python -m search.run.storage --results <study>` prunes a finished study by hand).
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
from pathlib import Path

import pyarrow.fs
from ray.tune import Callback
from ray.tune.experiment import Trial

from search.record.study import is_dir, trial_statuses
from trainer.checkpoint import MANIFEST, STATE_FILE
from trainer.jsonout import dumps


def _folders(fs, trial_path: str) -> list[str]:
    listing = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    return sorted(i.path for i in listing if i.type == pyarrow.fs.FileType.Directory
                  and i.base_name.startswith("checkpoint_"))


def prune_resume_state(fs, trial_path: str) -> int:
    """Delete the exact-resume state of every checkpoint folder of one ended trial, keeping its
    best model; returns the bytes freed. Idempotent; nothing where storage cannot be listed."""
    freed = 0
    try:
        folders = _folders(fs, trial_path)
    except (OSError, ValueError):
        return 0
    for folder in folders:
        state = f"{folder}/{STATE_FILE}"
        info = fs.get_file_info(state)
        if info.type != pyarrow.fs.FileType.File:
            continue
        manifest_path = f"{folder}/{MANIFEST}"
        if fs.get_file_info(manifest_path).type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(manifest_path) as f:
                manifest = json.loads(f.read().decode())
            if manifest.get("resume") or STATE_FILE in manifest.get("files", {}):
                manifest["resume"] = False
                manifest.get("files", {}).pop(STATE_FILE, None)
                manifest["deleted"] = {STATE_FILE: info.size}   # why a resume epoch holds none

                tmp = manifest_path + ".tmp"   # first, and whole: the folder stays complete
                with fs.open_output_stream(tmp) as f:
                    f.write(dumps(manifest).encode())
                fs.move(tmp, manifest_path)
        fs.delete_file(state)
        freed += info.size
    return freed


def stored_bytes(fs, path: str) -> dict[str, int]:
    """{"state": bytes of exact-resume state files, "total": every file} under `path`."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == pyarrow.fs.FileType.File]
    return {"state": sum(i.size for i in files if i.base_name == STATE_FILE),
            "total": sum(i.size for i in files)}


class ResumeStatePruner(Callback):
    """Driver-side: deletes an ended trial's exact-resume state (module docstring). Stateless, so
    it pickles into Tune's experiment state and comes back with `Tuner.restore`."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.freed = 0   # bytes, this driver's lifetime

    def _prune(self, trial) -> None:
        try:
            freed = prune_resume_state(trial.storage.storage_filesystem, trial.storage.trial_fs_path)
        except OSError as exc:   # storage unreachable: the state stays, the search goes on
            print(f"[search] could not delete the resume state of trial {trial.trial_id}: {exc}",
                  flush=True)
            return
        self.freed += freed
        if freed and self.verbose:
            print(f"[search] trial {trial.trial_id} ended: {freed / 2**20:.1f} MiB of resume "
                  f"state deleted", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # called by Tune's stop_trial only: the trial finished or the scheduler stopped it; an
        # erroring trial goes through on_trial_error / on_trial_recover instead
        self._prune(trial)

    def on_experiment_end(self, trials, **info):
        # again once every actor is gone: a stopped trial's worker can still upload the epoch it
        # was training when the stop came

        for trial in trials:
            if trial.status == Trial.TERMINATED:
                self._prune(trial)


def prune_study(study_dir: str) -> int:
    """Prune every TERMINATED trial of a study folder (Tune's newest experiment state says
    which); returns the bytes freed. ERROR'd and unfinished trials keep their state."""
    fs, path = pyarrow.fs.FileSystem.from_uri(study_dir)
    freed = 0
    for trial_id, status in trial_statuses(fs, path).items():
        if status == "TERMINATED":
            freed += prune_resume_state(fs, posixpath.join(path, f"trial_{trial_id}"))
    return freed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="delete the exact-resume state of a study's ended trials")
    p.add_argument("--results", required=True, help="the study folder, local or s3://...")
    a = p.parse_args(argv)
    study = a.results if "://" in a.results else str(Path(a.results).resolve())

    if not is_dir(study):
        print(f"error: --results {a.results} is not a study folder", file=sys.stderr)
        return 2
    print(f"{study}: {prune_study(study) / 2**30:.2f} GiB of resume state deleted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
