"""MLflow on the driver: one parent run per study, one nested child run per trial.

`StudyTracker` is the only writer; the live search (`MLflowTrialCallback`,
search/record/trial_callback.py) and the re-log command (search.record.relog) both go through it, so a trial logged twice is found by its tags
(study_dir + trial_id) and only the epochs not yet logged are added. Only aggregate metrics,
hyperparameters and the configuration are logged, never patient content.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock

from search.record.space import RANGES

LOGGED_PREFIXES = ("val/", "train/", "mod/")
LOGGED_KEYS = ("es_auc", "auc", "time_this_iter_s")


class TrackingUnavailable(RuntimeError):
    pass


def default_tracking_uri(results_dir: str | Path) -> str:
    """MLFLOW_TRACKING_URI if set, else an ABSOLUTE sqlite file under the results folder (Tune
    changes each trial's working directory, so a relative URI would scatter stores)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(results_dir) / "mlflow.db").resolve())


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail before the search starts when the store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({exc}). Start it (mlflow/serve.sh), "
                "or run with --no-tracking and fill MLflow afterwards with "
                "`python -m search.record.relog --results <study folder> --tracking-uri URI`.") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            raise TrackingUnavailable(f"sqlite tracking URI must be absolute, got {uri}")
        path.parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith("file:") or "://" not in uri:
        raise TrackingUnavailable(f"{uri}: MLflow 3 refuses the file store; use sqlite:////abs/mlflow.db "
                                  "or http://host:5000")


def store_lock(uri: str):
    """A file lock next to a sqlite store (`<file>.lock`), held while a process opens it: MLflow
    creates and migrates a new store's schema on first open, and two processes migrating the
    same new file at once crash one. A no-op for servers and other stores."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=600)


def ui_hint(uri: str, experiment_id: str) -> tuple[str, str]:
    """(command to open the UI, runs-table URL). The GenAI overview page is useless here."""
    if uri.startswith(("http://", "https://")):
        server = uri.rstrip("/")
        command = f"open {server} in a browser"
    else:
        server = "http://127.0.0.1:5000"
        command = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"  # loopback
    # the workflowType parameter lands a fresh browser on "Training runs", not GenAI (stack.md)
    return command, f"{server}/#/experiments/{experiment_id}?workflowType=machine_learning"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return out


def trial_params(config: dict, base: dict) -> dict[str, str]:
    """Child-run params: the mode's searched hyperparameters plus the fixed configuration (base.*);
    in the confirmation stage the candidate's mode and seed replace the base's."""
    params = {name: str(value) for name, value in config.items() if name in RANGES}
    base = {**base, **{k: config[k] for k in ("mode", "seed") if k in config}}   # confirmation
    params.update(_flatten({k: v for k, v in base.items() if k not in params}, "base."))
    return params


def result_metrics(result: dict) -> dict[str, float]:
    """The numeric, finite metrics of one Tune result worth logging."""
    out = {}
    for k, v in result.items():
        if (k.startswith(LOGGED_PREFIXES) or k in LOGGED_KEYS) and isinstance(v, (int, float)) \
                and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class StudyTracker:
    """Parent + child runs of one study in one MLflow experiment (idempotent writers)."""

    def __init__(self, tracking_uri: str, experiment: str, study_dir: str,
                 artifact_root: str | None = None):
        # The study's identity in MLflow: its URI without query options (an s3:// storage path
        # may carry ?endpoint_override=...; the same study reached another way stays one study).
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.study_dir = study_dir.split("?", 1)[0]
        self.artifact_root = artifact_root
        self._client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}
        self._logged_step: dict[str, int] = {}

    def __getstate__(self):   # Tune pickles callbacks into the experiment state
        # Caches are not kept: a restored driver re-reads runs and logged steps from MLflow
        # (the pickled snapshot lags behind what was logged before a SIGKILL).
        state = dict(self.__dict__)
        state.update(_client=None, _children={}, _logged_step={})
        return state

    @property
    def client(self):
        if self._client is None:
            # mlflow (about 1.5 s to import) loads here, on the first use: the search opens the
            # store in a thread while Ray starts (open(), runner.prepare_study), and the commands
            # that never log (--no-tracking, --help) never pay for it; the same for Metric, Param
            from mlflow import MlflowClient

            with store_lock(self.tracking_uri):
                # a new sqlite store creates its tables and runs MLflow's schema migrations when
                # first opened: two processes doing so at once crashed one ("duplicate column
                # name: step"); the tracking store (opened by the client) and the registry
                # store both migrate
                client = MlflowClient(tracking_uri=self.tracking_uri)
                client._get_registry_client().store
            self._client = client
        return self._client

    def open(self) -> float:
        """Import mlflow and open the store (a new sqlite store creates its tables): seconds.
        The search does this while Ray starts."""
        started = time.perf_counter()
        self.client.get_experiment_by_name(self.experiment)
        return time.perf_counter() - started

    # -- parent ---------------------------------------------------------------
    def start_study(self, tags: dict[str, str], params: dict[str, str]) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            if self.artifact_root and self.tracking_uri.startswith("sqlite:"):
                # sqlite stores default to ./mlruns relative to the cwd: pin it absolutely.
                location = Path(self.artifact_root).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        # without it MLflow 3 opens the experiment on its GenAI overview (traces, tokens)
        self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind",
                                       "custom_model_development")
        found = self._search(f"tags.study_dir = '{self.study_dir}' and tags.run_kind = 'study'")
        if found:
            self.parent_run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(self.parent_run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=Path(self.study_dir).name,
                                         tags={**tags, "run_kind": "study", "study_dir": self.study_dir})
            self.parent_run_id = run.info.run_id
            self._log_params(self.parent_run_id, params)
        return self.parent_run_id

    def log_card(self, card_path: str) -> None:
        """The dataset card (text and JSON, aggregate counts only) as artifacts of the study run."""
        for path in (Path(card_path), Path(card_path).with_suffix(".json")):
            self.client.log_artifact(self.parent_run_id, str(path), artifact_path="dataset_card")

    def end_study(self, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
        for k, v in (tags or {}).items():
            self.client.set_tag(self.parent_run_id, k, str(v))
        self.client.set_terminated(self.parent_run_id, status=status)

    # -- children -------------------------------------------------------------
    def run_id(self, trial_id: str) -> str | None:
        """The MLflow run of a trial of this study (search or a stage): this tracker's cache,
        else found by its tags (a run finished before a driver restart is in no cache); None
        when it has none. The one place a trial id becomes a run id."""
        if trial_id in self._children:
            return self._children[trial_id]
        found = self._search(f"tags.study_dir = '{self.study_dir}' and tags.trial_id = '{trial_id}'")
        return found[0].info.run_id if found else None

    def child(self, trial_id: str, config: dict, tags: dict[str, str], base: dict,
              run_name: str | None = None) -> str:
        """The child run of a trial: found by tag, created (with params) when absent. Default
        name: mode and trial id, e.g. `full-3f2a1_00004`."""
        if trial_id in self._children:
            return self._children[trial_id]
        found = self._search(f"tags.study_dir = '{self.study_dir}' and tags.trial_id = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "es_auc")
            self._logged_step[run_id] = max((m.step for m in history), default=0)
        else:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name or f"{tags.get('mode', 'trial')}-{trial_id}",
                tags={**tags, "mlflow.parentRunId": self.parent_run_id,
                      "run_kind": tags.get("run_kind", "trial"),
                      "trial_id": trial_id, "study_dir": self.study_dir})
            run_id = run.info.run_id
            self._log_params(run_id, trial_params(config, base))
            self._logged_step[run_id] = 0
        self._children[trial_id] = run_id
        return run_id

    def log_epoch(self, run_id: str, result: dict) -> bool:
        """Log one epoch with step = epoch; epochs already logged are skipped (idempotent).
        Returns whether it was new."""
        from mlflow.entities import Metric   # late: see client

        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._logged_step.get(run_id, 0):
            return False
        ts = int(result.get("timestamp", time.time()) * 1000)
        metrics = [Metric(k, v, ts, step) for k, v in result_metrics(result).items()]
        for i in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[i:i + 900])
        self._logged_step[run_id] = step
        return True

    def logged_step(self, run_id: str) -> int:
        """The last epoch logged to a run by this tracker (0: none, or a run it has not opened)."""
        return self._logged_step.get(run_id, 0)

    def end_trial(self, run_id: str, status: str, epochs: int, max_epochs: int,
                  extra_tags: dict | None = None) -> None:
        stopped = status == "FINISHED" and epochs < max_epochs
        tags = {"epochs_trained": epochs, "asha_stopped": str(stopped).lower(), **(extra_tags or {})}
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))
        self.client.set_terminated(run_id, status=status)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    # -- helpers --------------------------------------------------------------
    def close_lost_trials(self, trial_ids: set[str]) -> list[str]:
        """Runs of this study's search whose trial the study does not hold: a trial a killed
        driver started after its last experiment snapshot, which the restored study never ran
        again (it samples a new one). Ended as KILLED with tag lost_at_driver_restart=true, so
        the experiment keeps one live run per trial of the study. Returns their trial ids."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=5000,
            filter_string=f"tags.study_dir = '{self.study_dir}' and tags.run_kind = 'trial'")
        lost = [r for r in runs if r.data.tags.get("trial_id") not in trial_ids]
        for r in lost:
            self.client.set_tag(r.info.run_id, "lost_at_driver_restart", "true")
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")
        return [r.data.tags.get("trial_id") for r in lost]

    def _search(self, filter_string: str):
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       max_results=10)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param   # late: see client

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])


def stage_run(stage: str, label: str, cand: dict, seed, tags: dict) -> tuple[dict, dict, str]:
    """(config, tags, run name) of a confirm / sweep run: the candidate's hyperparameters and
    mode with its seed, named `<stage>-<candidate>-seed<s>` (live callback and relog alike)."""
    return ({**cand, "seed": seed},
            {**tags, "mode": cand["mode"], "seed": str(seed), "candidate": label},
            f"{stage}-{label}-seed{seed}")
