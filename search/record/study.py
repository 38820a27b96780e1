"""The one owner of a study's results folder and metadata.

A study lives at `<storage-path>/<name>/` (local folder or s3:// through pyarrow.fs): Tune's own
state, one `trial_<id>/` per trial, `study.json` (the search settings and the trial constants)
and, once the study ends, `decision.json` (front, confirmation, paired test, registry). Figures
and the report are written to a LOCAL folder (`local_dir`), the study folder itself when it is
local. runner, relog, analysis, summary, confirm and report read and write a study only here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.fs

from search.record.space import RANGES, hyperparameters, typed
from trainer.jsonout import dumps

STUDY_FILE = "study.json"
FORMAT = 4               # study.json's "format": bumped when a pickled module moves (record/migrate.py)
DECISION_FILE = "decision.json"
METRIC = "es_auc"        # the plain key ASHA and Optuna read (validation ES-AUC)
STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}   # others: interrupted -> KILLED
REMOTE = ("s3://", "gs://")
CONFIRM = "confirm"   # the confirmation stage: Tune folder <study>-confirm, run_kind tag, run names


# -- paths and trial ids: the one place they are built and parsed --------------------------------
def stage_path(storage_path: str, name: str) -> str:
    """`<storage-path>/<name>`: a study's (or a stage's: `<study>-confirm`) Tune folder. An
    s3:// storage path's query options (?endpoint_override=...) stay at the end, after the folder."""
    base, sep, query = str(storage_path).partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def trial_id_of(path) -> str:
    """The Tune trial id of a trial folder (`.../trial_<id>`, search.run.trainable.trial_dirname):
    local or s3:// (a ?query dropped), with or without a trailing slash."""
    name = str(path).partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return name.removeprefix("trial_")


# -- files ----------------------------------------------------------------------------------
def _fs(study_dir: str):
    if not study_dir.startswith(REMOTE):
        study_dir = str(Path(study_dir).resolve())
    return pyarrow.fs.FileSystem.from_uri(study_dir)


class StorageUnreachable(ValueError):
    """--storage-path in object storage that does not answer: one line, not pyarrow's traceback."""


def check_storage(storage_path: str) -> None:
    """One request to an s3:// / gs:// storage path before anything is started (a local folder
    needs none): an endpoint nothing answers at, missing credentials or a missing bucket fail
    here in one line naming the path, instead of a 24-line pyarrow traceback from Tune. It
    takes what pyarrow's retries take: about 6 s for a refused connection."""
    if not storage_path.startswith(REMOTE):
        return
    try:
        fs, path = _fs(storage_path)
        fs.get_file_info(path)
    except (OSError, ValueError) as exc:   # pyarrow: OSError (network, auth), ArrowInvalid (the URI)
        raise StorageUnreachable(f"--storage-path {storage_path}: {_storage_cause(str(exc))}") from None


def _storage_cause(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "no answer"
    aws = first.split("AWS Error ", 1)[-1].split("; Details")[0] if "AWS Error " in first else first
    if "NETWORK_CONNECTION" in aws or "Could not connect" in aws or "timed out" in aws.lower():
        return (f"nothing answers at its endpoint ({aws[:200]}): check endpoint_override in the "
                "path, the network, or that the object store is running")
    if "ACCESS_DENIED" in aws or "403" in aws or "credentials" in aws.lower():
        return (f"access denied ({aws[:200]}): give this machine and every node credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an instance profile)")
    if "NO_SUCH_BUCKET" in aws or "NoSuchBucket" in aws:
        return f"the bucket does not exist ({aws[:200]}): create it or fix the path"
    return f"cannot be read ({aws[:200]})"


def write_json(study_dir: str, filename: str, obj: dict) -> None:
    fs, path = _fs(study_dir)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{filename}") as f:
        f.write(dumps(obj, indent=1, default=str).encode())   # strict: NaN -> null


def read_json(study_dir: str, filename: str, filesystem=None) -> dict:
    fs, path = study_fs(study_dir, filesystem)
    return json.loads(_text(fs, f"{path}/{filename}"))


def write_study(study_dir: str, search: dict, setup: dict) -> None:
    """The study's search settings and trial constants, next to Tune's own state."""
    write_json(study_dir, STUDY_FILE, {"format": FORMAT, "search": search, "setup": setup})


def read_study(study_dir: str, filesystem=None) -> dict:
    return read_json(study_dir, STUDY_FILE, filesystem)


def study_format(meta: dict) -> int:
    """The format of a study's `study.json` contents. No number: format 0 or 1 (record/migrate.py),
    read as 0, so a migration applies every rename (those of names a pickle lacks change nothing)."""
    return int(meta.get("format", 0))


def local_dir(search: dict) -> Path:
    """Local folder for figures and the report: the study folder, or a mirror of its name under
    the local results folder when the study lives in object storage."""
    study_dir = stage_path(search["storage_path"], search["name"])
    local = Path("multifair-results").resolve() / search["name"] if study_dir.startswith(REMOTE) \
        else Path(study_dir)
    local.mkdir(parents=True, exist_ok=True)   # a study on s3:// has no local folder yet
    return local


def space_summary(mode: str = "full") -> dict[str, str]:
    """The searched ranges of a training method (search/record/space.py)."""
    return {k: f"[{r.low}, {r.high}]{' log' if r.log else ''}" for k, r in RANGES.items()
            if k in hyperparameters(mode)}


# -- MLflow metadata of a study ---------------------------------------------------------------
def study_tags(search: dict, commit: str) -> dict[str, str]:
    return {"dataset": search["dataset"], "attribute": search["attribute"], "mode": search["mode"],
            "seed": str(search["seed"]), "git_commit": commit, "preset": search["preset"],
            "searcher": search["searcher"], "scheduler": search["scheduler"],
            "objective": search.get("objective", "es_auc"),
            "shift_test": str(bool(search.get("shift_root"))).lower()}   # never the path itself


def study_params(search: dict) -> dict[str, str]:
    keep = ("num_samples", "max_epochs", "grace_period", "reduction_factor", "cpus_per_trial",
            "gpus_per_trial", "max_failures", "seed", "searcher", "scheduler", "preset", "mode",
            "objective", "min_auc_drop", "finalists", "confirm_seeds", "confirm_budget", "confirm_folds", "alpha",
            "min_gain", "warm_start", "objectives", "min_missing_es_auc")
    params = {k: str(search[k]) for k in keep if k in search}
    params.update({f"range.{k}": v for k, v in space_summary(search.get("mode", "full")).items()})
    params.update({f"baseline.{k}": str(v) for k, v in search["baseline"].items()})
    return params


# -- trials -----------------------------------------------------------------------------------
def study_fs(study_dir, filesystem=None):
    """(filesystem, path) of a study folder: `study_dir` inside `filesystem` when given, else a
    local path or a URI (s3://bucket/p?endpoint_override=...)."""
    return (filesystem, str(study_dir).rstrip("/")) if filesystem is not None else _fs(str(study_dir))


def _text(fs, path: str) -> str:
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def trial_statuses(fs, path: str, listing=None) -> dict[str, str]:
    """trial_id -> Tune status, from the newest experiment_state-*.json of a study folder."""
    if listing is None:
        listing = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    states = sorted(i.path for i in listing if i.type == pyarrow.fs.FileType.File
                    and i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
    statuses = {}
    if states:
        for json_state, _ in json.loads(_text(fs, states[-1]))["trial_data"]:
            state = json.loads(json_state)
            statuses[state["trial_id"]] = state["status"]
    return statuses


def read_trials(study_dir, filesystem=None) -> list[dict]:
    """Every trial of a study folder (local, s3://, or a path inside `filesystem`): id, config,
    per-epoch results, Tune status. Reads only JSON: one listing of the study folder, the newest
    experiment state and each trial's params.json and result.json; checkpoints are never opened
    (a 100-trial study holds tens of GiB of them)."""
    fs, path = study_fs(study_dir, filesystem)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))   # one level
    statuses = trial_statuses(fs, path, listing)
    trials = []
    for folder in sorted(i.path for i in listing if i.type == pyarrow.fs.FileType.Directory):
        names = ("params.json", "result.json", "error.txt")
        found = {i.base_name for i in fs.get_file_info([f"{folder}/{n}" for n in names])
                 if i.type == pyarrow.fs.FileType.File}
        if "params.json" not in found:
            continue
        rows = [json.loads(line) for line in _text(fs, f"{folder}/result.json").splitlines()
                if line.strip()] if "result.json" in found else []
        trial_id = rows[0]["trial_id"] if rows else trial_id_of(folder)
        status = statuses.get(trial_id, "ERROR" if "error.txt" in found else "UNKNOWN")
        trials.append({"trial_id": trial_id, "config": json.loads(_text(fs, f"{folder}/params.json")),
                       "results": rows, "tune_status": status, "path": folder})
    return trials


def is_dir(study_dir, filesystem=None) -> bool:
    fs, path = study_fs(study_dir, filesystem)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory


def best_epoch(history: dict[int, float]) -> tuple[int, float] | None:
    """(epoch, value) of a trial's best finite validation ES-AUC; the first epoch on ties (the
    trainer keeps that epoch's weights: select_metric es_auc)."""
    finite = [(e, v) for e, v in sorted(history.items()) if math.isfinite(v)]
    return max(finite, key=lambda ev: ev[1]) if finite else None


def trial_record(trial_id: str, config: dict, rows: list[dict], status: str, **extra) -> dict:
    """One trial as every stage reads it: hyperparameters, ES-AUC history, and the validation
    metrics of its best epoch (`val`: flat `val/...` keys plus es_auc and auc). A trial that
    never started (interrupted study) has no config."""
    config = config or {}
    history = {int(r.get("epoch", 0)): float(r[METRIC]) for r in rows
               if isinstance(r.get(METRIC), (int, float))}
    curve = {int(r.get("epoch", 0)): (float(r["auc"]), float(r[METRIC])) for r in rows
             if isinstance(r.get(METRIC), (int, float)) and isinstance(r.get("auc"), (int, float))}
    best = best_epoch(history)
    val = {}
    if best is not None:
        row = next(r for r in rows if int(r.get("epoch", 0)) == best[0])
        val = {k: float(v) for k, v in row.items() if (k.startswith("val/") or k in ("es_auc", "auc"))
               and isinstance(v, (int, float))}
    return {"trial_id": trial_id, "params": typed(config),
            "config": config, "history": history, "curve": curve, "epochs": max(history, default=0),
            "best_epoch": best[0] if best else None, "val": val, "status": status, **extra}


def full_length(trials: list[dict], max_epochs: int) -> list[dict]:
    """Trials that trained every epoch and have a validation score: the only ones whose values
    compare (ASHA-stopped trials report epoch-1 or epoch-3 values)."""
    return [t for t in trials if t["status"] != "FAILED" and t["epochs"] >= max_epochs and t["val"]]
