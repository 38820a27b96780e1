"""MLflow on the driver: one parent run per study, one nested child run per trial.

`StudyTracker` is the only writer; the live search (`MLflowTrialCallback`) and the re-log
command (search.record.relog) both go through it, so a trial logged twice is found by its tags
(study_dir + trial_id) and only the epochs not yet logged are added. Only aggregate metrics,
hyperparameters and the configuration are logged, never patient content.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from ray.tune import Callback

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
    import contextlib

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

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
        from mlflow.entities import Metric

        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._logged_step.get(run_id, 0):
            return False
        ts = int(result.get("timestamp", time.time()) * 1000)
        metrics = [Metric(k, v, ts, step) for k, v in result_metrics(result).items()]
        for i in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[i:i + 900])
        self._logged_step[run_id] = step
        return True

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
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])


def _timed(method):
    """Adds the seconds a callback method takes to self.seconds (benchmarks: MLflow's share)."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds = getattr(self, "seconds", 0.0) + time.perf_counter() - started
    return wrapper


def stage_run(stage: str, label: str, cand: dict, seed, tags: dict) -> tuple[dict, dict, str]:
    """(config, tags, run name) of a confirm / sweep run: the candidate's hyperparameters and
    mode with its seed, named `<stage>-<candidate>-seed<s>` (live callback and relog alike)."""
    return ({**cand, "seed": seed},
            {**tags, "mode": cand["mode"], "seed": str(seed), "candidate": label},
            f"{stage}-{label}-seed{seed}")


# MLflow errors that a retry cannot fix (a bad value, a missing run, no permission): the
# operation is set aside (written out at the end) instead of blocking the queue
NOT_RETRYABLE = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                 "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"}
RESULT_KEYS = ("epoch", "training_iteration", "timestamp", "node_id", "attempt_start_epoch",
               "reported_again", "replay")


def retryable(exc: BaseException) -> bool:
    """Whether an MLflow call may succeed later: a server down, a timeout, a 5xx, a locked store."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in NOT_RETRYABLE
    return isinstance(exc, (OSError, TimeoutError))


def flush_timeout_s() -> float:
    """How long the end of a search waits for queued MLflow operations (MULTIFAIR_MLFLOW_FLUSH_S)."""
    return float(os.environ.get("MULTIFAIR_MLFLOW_FLUSH_S", "120"))


class MLflowTrialCallback(Callback):
    """Driver-side Tune callback: child run per trial under the study's parent run.

    Off Tune's loop: each hook only appends an operation (plain JSON data) to a queue; one
    background thread runs them in order through the StudyTracker, retrying an operation that
    fails because MLflow cannot be reached (backoff up to 30 s) until it succeeds, so a server
    outage mid-search neither stops the search nor loses a metric: when the server is back the
    queue drains (every operation is idempotent: runs are found by tags, epochs already logged
    are skipped). `flush` (Tune's on_experiment_end) waits for the queue, at most
    MULTIFAIR_MLFLOW_FLUSH_S seconds (default 120); what is still queued then is written to a
    local JSON file that `python -m search.record.relog --pending FILE` replays (`unlogged_path`)."""

    def __init__(self, tracker: StudyTracker, max_epochs: int, trial_tags: dict[str, str], base: dict,
                 candidates: dict | None = None, stage: str = "confirm", unlogged_dir: str | None = None):
        self.tracker, self.max_epochs, self.trial_tags, self.base = tracker, max_epochs, trial_tags, base
        self.candidates = candidates or {}   # confirm / sweep stage: label -> hyperparameters + mode
        self.stage = stage
        self.unlogged_dir = unlogged_dir or str(Path("multifair-results").resolve())
        self.retries: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.placement: dict[str, dict] = {}   # trial_id -> nodes, resume epochs, epochs repeated
        self.unlogged_path: str | None = None  # set when a flush left operations unlogged
        self.gave_up = False                   # ... because MLflow was still down
        self.outages: list[float] = []         # seconds of each stretch MLflow could not be reached
        self._init_queue([])

    def _init_queue(self, pending: list) -> None:
        import collections
        import threading

        self._pending = collections.deque(pending)
        self._cond = threading.Condition()
        self._thread = None
        self._closing = self._abandoned = False
        self._set_aside: list[dict] = []

    def __getstate__(self):   # Tune pickles callbacks into its experiment state
        state = dict(self.__dict__)
        with self._cond:
            pending = list(self._pending)   # a restored driver re-runs them (idempotent)
        for name in ("_cond", "_thread", "_pending", "_set_aside", "_closing", "_abandoned"):
            state.pop(name, None)
        return {**state, "_pickled_pending": pending}

    def __setstate__(self, state):
        pending = state.pop("_pickled_pending", [])
        # a study pickled before the queue existed (--resume of an older study) lacks these
        self.__dict__.update({"unlogged_dir": str(Path("multifair-results").resolve()),
                              "unlogged_path": None, "gave_up": False, "outages": []})
        self.__dict__.update(state)
        self._init_queue(pending)

    # -- the queue ------------------------------------------------------------
    def _put(self, op: dict) -> None:
        with self._cond:
            self._pending.append(op)
            self._closing = self._abandoned = False
            self._cond.notify_all()
            self._start_thread()

    def _start_thread(self) -> None:
        """The queue's thread, if none runs (called holding the lock)."""
        import threading

        if self._thread is None and self._pending:
            self._thread = threading.Thread(target=self._work, daemon=True, name="multifair-mlflow-log")
            self._thread.start()

    def _work(self) -> None:
        backoff, down_since = 1.0, None
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    self._thread = None   # under the lock: the next _put starts a new thread
                    return
                op = self._pending[0]
            try:
                self._execute(op)
            except Exception as exc:   # noqa: BLE001 - decided below: retry or set aside
                if not retryable(exc):
                    print(f"[search] MLflow refused a {op['op']} of trial {op.get('trial_id')}: "
                          f"{str(exc).splitlines()[0][:300]} (kept for search.record.relog)", flush=True)
                    with self._cond:
                        self._set_aside.append(op)
                        self._pending.popleft()
                        self._cond.notify_all()
                    continue
                if down_since is None:
                    down_since = time.time()
                    print(f"[search] MLflow unreachable ({str(exc).splitlines()[0][:200]}): the search "
                          f"goes on, {len(self._pending)} operation(s) queued, retrying", flush=True)
                with self._cond:
                    if self._abandoned:
                        self._thread = None
                        return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if down_since is not None:
                self.outages.append(time.time() - down_since)
                print(f"[search] MLflow reachable again after {self.outages[-1]:.0f} s: draining "
                      f"{len(self._pending)} queued operation(s)", flush=True)
                down_since, backoff = None, 1.0
            with self._cond:
                if self._pending and self._pending[0] is op:
                    self._pending.popleft()
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued operation is logged (at most `timeout` s, default
        flush_timeout_s()). True when nothing is left; else the rest goes to a local JSON file
        (unlogged_path), one line says so, and the queue stops."""
        timeout = flush_timeout_s() if timeout is None else timeout
        deadline = time.time() + timeout
        with self._cond:
            self._closing = True
            self._start_thread()   # operations restored with a snapshot may have none yet
            self._cond.notify_all()
            while self._pending and time.time() < deadline:
                self._cond.wait(min(1.0, max(0.0, deadline - time.time())))
            left, refused = list(self._pending), self._set_aside
            self._set_aside = []
            if left:
                self._abandoned = self.gave_up = True   # the server is still down
                self._cond.notify_all()
            thread = self._thread
        if thread is not None and not left:
            thread.join(timeout=5)
        if not left and not refused:
            return True
        self.unlogged_path = self._write_unlogged(left + refused)
        why = f"still unreachable after waiting {timeout:.0f} s" if left else "refused them"
        print(f"[search] MLflow at {self.tracker.tracking_uri} {why}: {len(left) + len(refused)} "
              f"operation(s) not logged, written to {self.unlogged_path}; nothing is lost: python -m "
              f"search.record.relog --results {self.tracker.study_dir} --tracking-uri "
              f"{self.tracker.tracking_uri} --pending {self.unlogged_path}", flush=True)
        return False

    def _write_unlogged(self, ops: list[dict]) -> str:
        from trainer.jsonout import dumps

        folder = Path(self.unlogged_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = Path(self.tracker.study_dir).name + ("" if not self.candidates else f"-{self.stage}")
        path = folder / f"mlflow-unlogged-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(dumps(self.pending_document(ops), indent=1, default=str))
        return str(path)

    def pending_document(self, ops: list[dict]) -> dict:
        """What `python -m search.record.relog --pending` needs to replay `ops` (no patient content:
        hyperparameters, configuration, aggregate metrics, tags)."""
        return {"kind": "multifair-mlflow-unlogged", "tracking_uri": self.tracker.tracking_uri,
                "experiment": self.tracker.experiment, "study_dir": self.tracker.study_dir,
                "max_epochs": self.max_epochs, "trial_tags": self.trial_tags, "base": self.base,
                "candidates": self.candidates, "stage": self.stage, "ops": ops}

    @classmethod
    def replay(cls, tracker: StudyTracker, document: dict) -> int:
        """Run the operations of a pending document synchronously through `tracker` (whose study
        run is started); returns their number."""
        callback = cls(tracker, document["max_epochs"], document["trial_tags"], document["base"],
                       document.get("candidates"), document.get("stage", "confirm"))
        for op in document["ops"]:
            callback._execute(op)
        return len(document["ops"])

    # -- operations (run on the queue's thread) -------------------------------
    def _run(self, trial_id: str, config: dict) -> str:
        tags, name = self.trial_tags, None
        if "candidate" in config:     # confirm / sweep trial: `<stage>-<candidate>-seed<s>`
            config, tags, name = stage_run(self.stage, config["candidate"],
                                           self.candidates[config["candidate"]], config["seed"], tags)
        return self.tracker.child(trial_id, config, tags, self.base, run_name=name)

    def _execute(self, op: dict) -> None:
        run_id = self._run(op["trial_id"], op["config"])
        kind = op["op"]
        if kind == "result":
            result = op["result"]
            if result.get("replay"):   # a resumed trial's earlier epochs: log those never logged
                for earlier in json.loads(result["replay"]):
                    self.tracker.log_epoch(run_id, {**earlier, "es_auc": earlier["val/es_auc"],
                                                    "auc": earlier["val/auc"]})
            new = self.tracker.log_epoch(run_id, result)
            # an epoch reported again without training (a finished trial whose end the driver
            # missed) is not an epoch trained twice
            self._tag_placement(run_id, op["trial_id"], result,
                                repeated=not new and not result.get("reported_again"))
        elif kind == "tags":
            for k, v in op["tags"].items():
                self.tracker.client.set_tag(run_id, k, str(v))
        elif kind == "end":
            # after a driver restore Tune's last result can predate epochs already logged
            epochs = max(op["epochs"], self.tracker._logged_step.get(run_id, 0))
            self.tracker.end_trial(run_id, op["status"], epochs, self.max_epochs, op.get("extra_tags"))

    def _tag_placement(self, run_id: str, trial_id: str, result: dict, repeated: bool) -> None:
        """Tags: the Ray node(s) the trial ran on, the epochs it resumed at after a lost node or
        driver, and how many epochs it trained twice. Written only when they change."""
        p = self.placement.setdefault(trial_id, {"nodes": [], "resumed_at": [], "repeated": 0})
        node, start = result.get("node_id"), int(result.get("attempt_start_epoch", 1))
        tags = {}
        if node and node != p.get("last"):
            tags["ray_node_id"] = p["last"] = node
            if node not in p["nodes"]:
                p["nodes"].append(node)
                tags["ray_nodes"] = ",".join(p["nodes"])
        if start > 1 and start not in p["resumed_at"]:
            p["resumed_at"].append(start)
            tags["resumed_at_epochs"] = ",".join(map(str, p["resumed_at"]))
        if repeated:
            p["repeated"] += 1
            tags["epochs_repeated"] = p["repeated"]
        if result.get("reported_again") and not p.get("again"):
            p["again"] = tags["end_reported_again"] = "true"   # finished; its end reached us late
        for k, v in tags.items():
            self.tracker.client.set_tag(run_id, k, str(v))

    # -- Tune's hooks (driver loop: enqueue only) -----------------------------
    @staticmethod
    def _op(kind: str, trial, **data) -> dict:
        return {"op": kind, "trial_id": trial.trial_id, "config": dict(trial.config), **data}

    @_timed
    def on_trial_start(self, iteration, trials, trial, **info):
        self._put(self._op("start", trial))

    @_timed
    def on_trial_result(self, iteration, trials, trial, result, **info):
        kept = {**result_metrics(result), **{k: result[k] for k in RESULT_KEYS if k in result}}
        self.epochs[trial.trial_id] = int(result.get("epoch", result.get("training_iteration", 0)))
        self._put(self._op("result", trial, result=kept))

    @_timed
    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self._put(self._op("tags", trial, tags={"retries": self.retries[trial.trial_id]}))

    def _epochs(self, trial) -> int:
        last = int((trial.last_result or {}).get("epoch", 0))
        return max(last, self.epochs.get(trial.trial_id, 0))

    @_timed
    def on_trial_complete(self, iteration, trials, trial, **info):
        self._put(self._op("end", trial, status="FINISHED", epochs=self._epochs(trial)))

    @_timed
    def on_trial_error(self, iteration, trials, trial, **info):
        self._put(self._op("end", trial, status="FAILED", epochs=self._epochs(trial),
                           extra_tags={"retries": self.retries.get(trial.trial_id, 0)}))

    def on_experiment_end(self, trials, **info):
        self.flush()
