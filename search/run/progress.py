"""A compact progress line on the driver: trials running / stopped early / done / failed and the
best validation ES-AUC so far (Ray's own table is kept at low verbosity)."""
from __future__ import annotations

import math
import time

from ray.tune import Callback

from search.record.study import METRIC


class ProgressCallback(Callback):
    def __init__(self, max_epochs: int, every_s: float = 10.0, label: str = "search"):
        self.max_epochs, self.every_s, self.label = max_epochs, every_s, label
        self.best = (-math.inf, None)
        self._last = 0.0
        self.started: dict[str, float] = {}   # trial id -> wall clock when Tune started it
        self.ended: dict[str, float] = {}     # ... when it completed, was stopped or failed

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(METRIC)
        if value is not None and value > self.best[0]:
            self.best = (value, trial.trial_id)
        if time.monotonic() - self._last >= self.every_s:
            self._print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()
        self._print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = time.time()
        self._print(trials)

    def on_experiment_end(self, trials, **info):
        self._print(trials)

    def _print(self, trials) -> None:
        self._last = time.monotonic()
        counts = summarize(trials, self.max_epochs)
        best = "n/a" if self.best[1] is None else f"{self.best[0]:.4f} (trial {self.best[1]})"
        print(f"[{self.label}] running {counts['running']} | pending {counts['pending']} | "
                     f"done {counts['done']} | stopped early {counts['stopped']} | "
                     f"failed {counts['failed']} | best val es_auc {best}", flush=True)


def summarize(trials, max_epochs: int) -> dict[str, int]:
    counts = dict(running=0, pending=0, done=0, stopped=0, failed=0)
    for t in trials:
        epochs = int((t.last_result or {}).get("epoch", 0))
        if t.status == "RUNNING":
            counts["running"] += 1
        elif t.status == "ERROR":
            counts["failed"] += 1
        elif t.status == "TERMINATED":
            counts["done" if epochs >= max_epochs else "stopped"] += 1
        else:
            counts["pending"] += 1
    return counts
