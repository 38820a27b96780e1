"""The live search's MLflow logging: a Tune callback on the driver, one child run per trial
under the study's parent run, written through the StudyTracker (search/record/tracking.py) by a
queue off Tune's loop that survives an MLflow outage.

Tune pickles this callback by module path into a study's tuner.pkl: moving it needs a study format
step (search/record/migrate.py; it left search.record.tracking at format 4).
"""
from __future__ import annotations

import collections
import functools
import json
import os
import threading
import time
from pathlib import Path

from ray.tune import Callback

from search.record.tracking import StudyTracker, result_metrics, stage_run
from trainer.jsonout import dumps

RETRY_MAX_S = 30.0   # the longest wait between two tries while MLflow cannot be reached

# MLflow errors that a retry cannot fix (a bad value, a missing run, no permission): the
# operation is set aside (written out at the end) instead of blocking the queue
NOT_RETRYABLE = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                 "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"}
RESULT_KEYS = ("epoch", "training_iteration", "timestamp", "node_id", "attempt_start_epoch",
               "reported_again", "replay")


def retryable(exc: BaseException) -> bool:
    """Whether an MLflow call may succeed later: a server down, a timeout, a 5xx, a locked store."""
    # mlflow is imported off the main thread while Ray starts (StudyTracker.open, runner.prepare_study);
    # an operation has failed, so it is loaded by now
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in NOT_RETRYABLE
    return isinstance(exc, (OSError, TimeoutError))


def flush_timeout_s() -> float:
    """How long the end of a search waits for queued MLflow operations (MULTIFAIR_MLFLOW_FLUSH_S)."""
    return float(os.environ.get("MULTIFAIR_MLFLOW_FLUSH_S", "120"))


def _timed(method):
    """Adds the seconds a callback method takes to self.seconds (benchmarks: MLflow's share)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds = getattr(self, "seconds", 0.0) + time.perf_counter() - started
    return wrapper



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
                backoff = min(backoff * 2, RETRY_MAX_S)
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
            epochs = max(op["epochs"], self.tracker.logged_step(run_id))
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
