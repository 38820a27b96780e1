"""One Tune trial = one trainer fit. Reports once per epoch (with a checkpoint where the policy
asks for one: checkpoint_kind), written and handed to Tune off the training thread
(BackgroundReporter); resumes from the newest complete checkpoint when Tune retries or restores
the trial.

The trial's config holds only the five hyperparameters (sampled by Optuna). The constants come
through tune.with_parameters as `setup`: "base" (the fixed TrainConfig as a dict), "synthetic"
(how to regenerate the generated dataset on a node that lacks it) and "test_hooks".
"""
from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import signal
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.fs
import ray
import torch
from filelock import FileLock
from ray import tune

from search.record.space import typed
from search.record.study import METRIC  # noqa: F401  (owned by search.record.study; an alias for old importers)
from search.run.dataprep import local_folder
from trainer.checkpoint import MANIFEST, complete, resumable, write_snapshot
from trainer.config import config_from_dict
from trainer.data import build_datasets, prepare
from trainer.data.synthetic import synthesize


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"


class DeliberateTrialFailure(RuntimeError):
    """Raised by the fail_baseline_trial test hook."""


def resolve(config: dict, setup: dict) -> dict:
    """A trial's hyperparameters: sampled (search), or a named candidate of the confirmation
    stage ({"candidate": label, "seed": s} -> the candidate's hyperparameters, mode and seed)."""
    if "candidate" in config:
        out = {**setup["candidates"][config["candidate"]], "seed": int(config["seed"])}
        if setup.get("resplit"):   # --confirm-folds: repeat r = the r-th seed re-splits train+val
            out.update(resplit_folds=setup["resplit"]["folds"],
                       resplit_fold=out["seed"] - setup["resplit"]["first_seed"])
        return out
    return dict(config)


def trial_config(config: dict, base: dict):
    """The TrainConfig of a trial: fixed base + the mode's hyperparameters (+ mode and seed in the
    confirmation stage), test split untouched."""
    base = dict(base)
    base.update({k: config[k] for k in ("mode", "seed", "resplit_folds", "resplit_fold") if k in config})
    base.update(typed(config))     # integer knobs stay ints (a TrainConfig int field)
    base["evaluate_test"] = False   # the test split is touched once, for the chosen config
    return config_from_dict(base)


def ensure_data(cfg, synthetic: dict | None) -> None:
    """Regenerate the generated dataset on this node if absent, then build the cache (cheap when
    built; the trainer's cache is locked and idempotent)."""
    if synthetic and not Path(cfg.data_root).exists():
        Path(cfg.data_root).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cfg.data_root) + ".lock"):
            if not Path(cfg.data_root).exists():
                synthesize(out=cfg.data_root, **synthetic)
    prepare(cfg)


# Fields of the trainer config that decide the prepared data (the memory-mapped cache entries).
DATA_FIELDS = ("dataset", "data_root", "attribute", "modalities", "note_source", "image_size",
               "oct_slices", "note_max_length", "note_encoder", "cache_dir", "allow_duplicates")
_DATASETS: dict[tuple, dict] = {}   # this worker process's prepared splits, by DATA_FIELDS


def datasets_for(cfg, synthetic: dict | None, prepared: dict | None = None) -> dict:
    """The splits of cfg's data, prepared once per worker process: a reused worker (Tune's
    reuse_actors) hands the next trial the same read-only memory-mapped datasets instead of
    auditing and opening the cache again. Every process on a node maps the same cache files, so
    the pages are shared by the operating system. The datasets are never written to (the trainer
    reads batches by index); each trial draws its own order from its own seed. `prepared`
    (setup["prepared"], search/run/dataprep.py): the cluster prepared the data; this node pulls its
    shards once and never reads the raw files."""
    key = (*((name, str(getattr(cfg, name))) for name in DATA_FIELDS), str(prepared))
    if key not in _DATASETS:
        folder = None
        if prepared:
            folder = local_folder(cfg, prepared)
        else:
            ensure_data(cfg, synthetic)
        _DATASETS.clear()   # one study's data per worker: a reused worker never holds two
        _DATASETS[key] = build_datasets(cfg, prepared=folder)
    return _DATASETS[key]


def preimport() -> None:
    """Ray's worker_process_setup_hook for the embedded Ray: every worker imports the trainer and
    timm (torch, torchvision: seconds on a laptop, the first model build otherwise) when it
    starts, before a trial reaches it. transformers stays lazy: only note models need it."""
    # importing them is this hook's work: the driver imports this module without the model code
    import timm  # noqa: F401

    import trainer.loop  # noqa: F401


def _history_metrics(entry: dict) -> dict:
    """A trainer history entry (EpochReport.flat(), null for undefined) as an epoch's result."""
    flat = {k: (float("nan") if v is None else v) for k, v in entry.items()}
    return {**flat, "es_auc": flat["val/es_auc"], "auc": flat["val/auc"]}


def match_threads_to_cpus() -> None:
    """torch's intra-op threads = this trial's CPUs. Ray sets OMP_NUM_THREADS for the trial's
    actor, but a worker that imported torch earlier (preimport, a reused worker) keeps the pool
    it started with: measured here, two 1-CPU trials whose torch ran 2 threads each on 2 cores
    trained 4x slower per epoch (oversubscribed OpenMP threads spin)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def epoch_metrics(report) -> dict[str, float]:
    """Flat metrics of one epoch: namespaced trainer keys plus plain keys for the scheduler."""
    metrics = {k: float(v) for k, v in report.flat().items()}
    metrics.update(epoch=report.epoch, es_auc=float(report.val["es_auc"]),
                   auc=float(report.val["auc"]))
    return metrics


def asha_rungs(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The epochs at which ASHA may stop a trial (Ray's one-bracket milestones, below max_t)."""
    if grace_period >= max_epochs:
        return []
    n = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    return sorted(r for r in (grace_period * reduction_factor ** k for k in range(n)) if r < max_epochs)


def checkpoint_policy(every: int, rungs: list[int] = ()) -> dict:
    """What a trial writes (setup["checkpoints"]): see checkpoint_kind."""
    return {"every": int(every), "rungs": sorted(int(r) for r in rungs)}


def checkpoint_kind(epoch: int, max_epochs: int, policy: dict | None) -> str | None:
    """"resume" (best model + exact-resume state), "best" (best model only) or None (no
    checkpoint) after `epoch`. The resume state (weights, both AdamW optimisers, RNG: about 2 GiB
    at the paper preset) is written every `every` epochs, never after the last one; the best
    model (weights only, bf16) at every epoch where the trial may end: ASHA's rungs (a trial it
    stops never needs its resume state again) and the last epoch. Older studies (no policy):
    resume state every epoch, as they were written."""
    policy = policy or {"every": 1, "rungs": []}
    if epoch < max_epochs and policy["every"] > 0 and epoch % policy["every"] == 0:
        return "resume"
    if epoch >= max_epochs or epoch in policy["rungs"]:
        return "best"
    return None


def _is_baseline(config: dict, baseline: dict) -> bool:
    return bool(baseline) and all(math.isclose(config[k], v) for k, v in baseline.items())


def complete_checkpoints(checkpoint):
    """(checkpoint, manifest) of every complete checkpoint folder of the trial that `checkpoint`
    (present or already deleted) belongs to, newest first, listed once from storage. Complete =
    the manifest (trainer/checkpoint.py) exists and every file it lists has its size, so a folder
    cut off mid-upload is skipped. Nothing where storage cannot be listed."""
    if checkpoint is None:
        return
    fs = checkpoint.filesystem
    parent = posixpath.dirname(checkpoint.path.rstrip("/"))
    try:
        listing = fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
        folders = sorted((i.base_name for i in listing if i.type == pyarrow.fs.FileType.Directory
                          and i.base_name.startswith("checkpoint_")), reverse=True)
        for name in folders:
            folder = f"{parent}/{name}"
            sizes = {i.base_name: i.size for i in fs.get_file_info(pyarrow.fs.FileSelector(folder))
                     if i.type == pyarrow.fs.FileType.File}
            if MANIFEST not in sizes:
                continue
            with fs.open_input_stream(f"{folder}/{MANIFEST}") as f:
                manifest = json.loads(f.read().decode())
            if complete(manifest, sizes):
                yield tune.Checkpoint(path=folder, filesystem=fs), manifest
    except (OSError, ValueError):
        return


def newest_checkpoint(checkpoint, need_state: bool = True):
    """(checkpoint, manifest) of the trial's newest complete checkpoint folder on storage, with
    exact-resume state if `need_state`; (None, None) when there is none. It can be newer than the
    one Tune restores (a SIGKILLed driver's last experiment snapshot, written at most every
    TUNE_GLOBAL_CHECKPOINT_S, can lag the trial by epochs) or older (Tune's newest may hold the
    best model only: trainer/checkpoint.py)."""
    return next(((c, m) for c, m in complete_checkpoints(checkpoint)
                 if resumable(m) or not need_state), (None, None))


def model_checkpoint(checkpoint):
    """The folder holding a trial's final best model: its newest complete checkpoint (each holds
    the validation-best weights so far), or `checkpoint` itself where storage cannot be listed."""
    newest, _ = newest_checkpoint(checkpoint, need_state=False)
    return newest or checkpoint


THREAD_TIMEOUT_S = 600   # see train_trial: at most one epoch's evaluation, with a wide margin


class BackgroundReporter:
    """Writes an epoch's checkpoint and hands the epoch to Tune on a thread of its own, while
    the training thread goes on with the next epoch. The training thread pays only for the
    snapshot (a memory copy of the weights and optimiser moments: trainer/checkpoint.py); the
    file writes and Tune's copy of the folder to storage (synchronous inside tune.report, ~2x the
    write) overlap training. At most one epoch is in flight: submit() and wait() first let the
    previous one finish, so reports reach Tune in order and a slow store slows training down
    rather than piling up snapshots in memory.

    Stopping: Tune stops a trial (ASHA, the end of the search) by ending the report it is
    waiting in (Ray's session raises SystemExit(0) in the reporting thread). That is noticed
    here, and check() (called after every optimiser step) or wait() ends the training thread
    the same way, so a stopped trial ends within one step (or, stopped during an evaluation, when
    the evaluation ends: train_trial raises Tune's thread timeout for that) and its worker can be
    reused."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.stopped = False
        self.last_cost: dict[str, float] = {}   # the previous write's seconds, sent with the next

    def submit(self, metrics: dict, snap) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(metrics, snap), daemon=True,
                                        name="multifair-checkpoint-report")
        self._thread.start()

    def _run(self, metrics: dict, snap) -> None:
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="multifair-ckpt-") as tmp:
                if snap is not None:
                    write_snapshot(snap, tmp)
                written = time.perf_counter()
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp) if snap else None)
            self.last_cost = {"cost/write_s": written - started,
                              "cost/persist_and_wait_s": time.perf_counter() - written}
        except SystemExit:
            self.stopped = True          # Tune stopped the trial while this report waited
        except BaseException as error:   # noqa: BLE001 - re-raised on the training thread
            self._error = error

    def check(self) -> None:
        """End the training thread if Tune has stopped the trial (cheap: called every step)."""
        if self.stopped:
            raise SystemExit(0)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        self.check()

    def close(self) -> None:
        """Let an epoch in flight reach Tune even when training raised (the error follows)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def train_trial(config: dict, setup: dict) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters(train_trial, setup=...))."""
    entered = time.time()
    started = time.perf_counter()
    # the model code loads on the worker, timed (cost/import_s): 0 s in a worker that has it
    # imported (preimport, reuse); the driver imports this module without it
    from trainer.loop import fit

    imported = time.perf_counter()
    match_threads_to_cpus()
    # Tune waits this long for a stopped trial's thread before it reuses the worker, 2 s by
    # default, and fails the NEXT trial when the thread is still running. With reports sent from
    # a second thread, a stop can come while this thread evaluates an epoch (no step boundary to
    # notice it at until the evaluation ends): allow for that (read by Tune in this process).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(THREAD_TIMEOUT_S))
    # Ray Train logs "Checkpoint successfully created at ..." per report at INFO; forwarded to
    # the driver, these lines trail the closing summary and say nothing the results folder doesn't
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    config = resolve(config, setup)
    cfg = trial_config(config, setup["base"])
    datasets = datasets_for(cfg, setup.get("synthetic"), setup.get("prepared"))
    hooks = setup.get("test_hooks") or {}
    # Where this attempt runs and the epoch it started at: the MLflow callback tags the run with
    # its node(s) and counts epochs trained twice after a node loss (docs/search.md). cost/*: where
    # the trial's seconds go (benchmarks/search_vs_optuna.py): entry is the wall clock at which the
    # trial's code began (the driver knows when it started the trial), import and data its first
    # steps, first_epoch includes building the model.
    attempt = {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid(),
               "cost/entry_time": entered, "cost/import_s": imported - started,
               "cost/data_s": time.perf_counter() - imported}
    clock = {"last": time.perf_counter(), "epoch": 0}
    reporter = BackgroundReporter()

    def on_step():
        # Test hook: steps after epoch k take `seconds` each (a long epoch, in which a stop must
        # still end the trial within a step), each noted in the file slow_steps_log if given
        slow = hooks.get("slow_steps_after_epoch")
        if slow and clock["epoch"] >= slow[0]:
            time.sleep(slow[1])
            if hooks.get("slow_steps_log"):
                with open(hooks["slow_steps_log"], "a") as log:
                    log.write(f"{os.getpid()} {clock['epoch'] + 1}\n")
        reporter.check()

    def on_epoch(report):
        # Test hook (documented in docs/search.md): make the baseline trial raise on every attempt.
        if hooks.get("fail_baseline_trial") and _is_baseline(config, hooks.get("baseline", {})) \
                and report.epoch >= hooks.get("fail_at_epoch", 1):
            raise DeliberateTrialFailure(f"test hook: baseline trial fails at epoch {report.epoch}")
        now = time.perf_counter()
        reporter.wait()   # the previous epoch's checkpoint written and its report taken by Tune
        waited = time.perf_counter()
        if hooks.get("kill_baseline_once_at_epoch") == report.epoch and not resumed \
                and _is_baseline(config, hooks.get("baseline", {})):
            # Test hook: the worker dies as an OOM kill would, after training this epoch and before
            # reporting it; Tune retries the trial on a new worker, which resumes from the
            # previous epoch's checkpoint.
            os.kill(os.getpid(), signal.SIGKILL)
        first = "attempt_start_epoch" not in attempt   # this attempt's first report
        key = "cost/first_epoch_s" if first else "cost/epoch_s"
        timing = {key: now - clock["last"], "cost/report_s": waited - now, **reporter.last_cost}
        attempt.setdefault("attempt_start_epoch", report.epoch)
        kind = checkpoint_kind(report.epoch, cfg.epochs, setup.get("checkpoints"))
        snap = report.snapshot(resume=kind == "resume") if kind is not None else None
        timing["cost/checkpoint_s"] = time.perf_counter() - waited
        replay = {}
        if resumed and first:
            # the epochs before the checkpoint, for the MLflow callback to log any that a killed
            # driver never did (one JSON string, first report after a resume only)
            earlier = [h for h in report.history if h["epoch"] < report.epoch]
            replay = {"replay": json.dumps(earlier)} if earlier else {}
        reporter.submit({**epoch_metrics(report), **attempt, **timing, **replay}, snap)
        for first_only in ("cost/import_s", "cost/data_s", "cost/entry_time"):
            attempt.pop(first_only, None)
        if report.epoch >= cfg.epochs:
            reporter.wait()   # the last report: the trial ends only once Tune has it
        clock["last"], clock["epoch"] = time.perf_counter(), report.epoch

    found = list(complete_checkpoints(tune.get_checkpoint()))   # newest first, one listing
    latest = found[0][1] if found else None
    if latest and latest["epoch"] >= cfg.epochs and latest.get("history"):
        # it had finished; the driver died before hearing so: report its last epoch (and the
        # earlier ones for MLflow), train nothing
        history = latest["history"]
        last = _history_metrics(history[-1])
        tune.report({**last, **attempt, "reported_again": 1, "replay": json.dumps(history[:-1])})
        return
    checkpoint = next((c for c, m in found if resumable(m)), None)
    resumed = checkpoint is not None
    try:
        if checkpoint is None:
            fit(cfg, on_epoch=on_epoch, progress=False, datasets=datasets, on_step=on_step)
            return
        with checkpoint.as_directory() as resume_dir:
            fit(cfg, on_epoch=on_epoch, resume_from=resume_dir, progress=False, datasets=datasets,
                on_step=on_step)
    finally:
        reporter.close()

