"""The search service: Optuna TPE + ASHA over the MultiFair trainer on Ray Tune, every trial in
MLflow. Entry scripts call `main(dataset, attribute, baseline)`; tests and benchmarks build a
`SearchConfig` (search/config.py: the settings and the command line) and call `run_search`, which
reads top to bottom: prepare (store, data, Ray) -> search -> summarise -> decide.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import ray
from ray import tune

from search.config import BadFlag, SearchConfig, parse_args  # noqa: F401  (BadFlag: part of this module's surface)
from search.decide import decide
from search.decide.confirm import StageStopped
from search.decide.scoring import summarize_results
from search.record import study, tracking
from search.record.reference import reference_of
from search.record.summary import SearchOutcome, print_summary
from search.record.tracking import TrackingUnavailable
from search.run import dataprep, warm_start
from search.run.cluster_size import check_room, release, request
from search.run.embedded_ray import init_local_ray
from search.run.objectives import reference_auc
from search.run.reaper import reap_ray_on_exit
from search.run.stage import search
from search.run.trainable import asha_rungs, checkpoint_policy
from trainer.config import make_config
from trainer.data import prepare
from trainer.data.synthetic import synthesize


def main(dataset: str, attribute: str, baseline: dict | None = None, argv=None) -> int:
    try:
        scfg = parse_args(dataset, attribute, baseline, argv)
        outcome = run_search(scfg)
    except (StudyExists, TrackingUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(scfg, outcome)
    if outcome.interrupted:
        return 130
    return 0 if outcome.best is not None and not outcome.stopped_stage else 1


# -- the search -----------------------------------------------------------------------------
class StudyExists(RuntimeError):
    pass


def base_config(scfg: SearchConfig):
    """The fixed trainer configuration of every trial (the baseline point's hyperparameters)."""
    return make_config(scfg.dataset, scfg.attribute, preset=scfg.preset, sets=scfg.sets,
                       data_root=scfg.data_root, mode=scfg.mode, epochs=scfg.max_epochs,
                       seed=scfg.seed, evaluate_test=False,
                       **({"shift_root": scfg.shift_root} if scfg.shift_root else {}),
                       max_gpu_memory_fraction=scfg.gpus_per_trial if 0 < scfg.gpus_per_trial < 1 else 1.0,
                       **scfg.baseline)


def generate_data(scfg: SearchConfig) -> dict:
    """Write a small synthetic dataset under the results folder, loudly."""
    n_train, n_val, n_test = scfg.synthetic_sizes
    spec = dict(layout=scfg.dataset, n_train=n_train, n_val=n_val, n_test=n_test, seed=scfg.seed)
    out = scfg.results_dir / "data" / f"synthetic-{scfg.dataset}-{n_train}-{n_val}-{n_test}-s{scfg.seed}"
    if not out.exists():
        synthesize(out=out, **spec)
    banner = "!" * 78
    print(f"{banner}\n!! No --data-root given: using a GENERATED SYNTHETIC dataset at\n!!   {out}\n"
          f"!! ({n_train}/{n_val}/{n_test} samples). Figures from it say nothing about the real data.\n"
          f"{banner}", file=sys.stderr, flush=True)
    scfg.data_root = str(out)
    return spec


def init_ray(scfg: SearchConfig) -> None:
    if ray.is_initialized():
        return
    if not scfg.local:
        try:
            ray.init(address="auto")
            print(f"[search] attached to the running Ray cluster: {ray.cluster_resources()}", flush=True)
            return
        except ConnectionError as exc:
            # A cluster was named or found but refused us (e.g. its auth token): never fall back
            # silently to a one-machine search; only "no Ray running here" falls through.
            if os.environ.get("RAY_ADDRESS") or "Failed to connect to Ray cluster at" in str(exc):
                raise ValueError(f"could not attach to the Ray cluster: {exc} (token-auth clusters "
                                 f"need RAY_AUTH_MODE=token; use --local for an embedded Ray)") from None
    # every worker imports the trainer as it starts (search.run.trainable.preimport), off the trials' path
    init_local_ray(scfg.num_cpus or os.cpu_count(), scfg.num_gpus if scfg.num_gpus >= 0 else None,
                   runtime_env={"worker_process_setup_hook": "search.run.trainable.preimport"})
    print(f"[search] embedded Ray (loopback only): {ray.cluster_resources()}", flush=True)


def run_search(scfg: SearchConfig) -> SearchOutcome:
    """Prepare (store, data, Ray) -> search -> summarise -> decide (confirm, test, register,
    figures, report). Each stage is its own module."""
    started = time.time()
    timings: dict[str, float] = {}
    if scfg.warm_start and not scfg.resume:     # refuse another space or objective before any work
        print(f"[search] warm start: {len(warm_start.load(scfg))} trials of {scfg.warm_start} "
              "seed the sampler", flush=True)
    tracker, setup, cfg = prepare_study(scfg, timings)
    auc_floor = None
    if scfg.objective == "constrained":
        setup["reference_auc"] = setup.get("reference_auc") or reference_auc(cfg, scfg, setup)
        auc_floor = setup["reference_auc"] - scfg.min_auc_drop
        print(f"[search] {reference_of(scfg.mode).name}'s validation AUC {setup['reference_auc']:.4f}: AUC floor "
              f"{auc_floor:.4f}", flush=True)
    if not scfg.resume:
        study.write_study(scfg.study_dir, scfg.to_dict(), setup)
    clock, timings["search_started"] = time.perf_counter(), time.time()
    results, tracker = search(scfg, setup, tracker, auc_floor, timings)
    timings["search_s"] = time.perf_counter() - clock
    confirming = scfg.finalists > 0
    clock = time.perf_counter()
    outcome = summarize_results(scfg, results, tracker, time.time() - started, test_best=not confirming,
                                setup=setup)
    timings["summary_s"] = time.perf_counter() - clock   # incl. the best model logged when no confirmation
    clock = time.perf_counter()
    if not outcome.interrupted and outcome.best is not None:
        try:   # an interrupted or incomplete stage leaves no decision and registers nothing
            outcome.decision = decide(scfg, setup, outcome.trials, tracker, auc_floor)
        except StageStopped as exc:
            outcome.stopped_stage, outcome.stop_message, outcome.interrupted = exc.stage, str(exc), exc.interrupted
    timings["decide_s"] = time.perf_counter() - clock
    outcome.wall_s = time.time() - started
    outcome.timings = timings
    if tracker is not None:
        tracker.end_study("KILLED" if outcome.interrupted else "FAILED" if outcome.stopped_stage else "FINISHED",
                          tags={"interrupted": str(outcome.interrupted).lower(),
                                "trials_stopped_early": outcome.stopped_early,
                                "trials_failed": outcome.failed,
                                "best_trial_id": (outcome.best or {}).get("trial_id", ""),
                                "chosen": _chosen_label(outcome)})
    return outcome


def _chosen_label(outcome) -> str:
    return ((outcome.decision or {}).get("confirmation") or {}).get("choice", {}).get("label", "")


def prepare_study(scfg: SearchConfig, timings: dict | None = None):
    """Refuse to overwrite, open the tracking store, data, Ray; returns (tracker, setup, cfg).
    `timings` receives the seconds of its stages (tracking_s, data_s, ray_start_s)."""
    timings = {} if timings is None else timings
    clock = time.perf_counter()
    scfg.results_dir.mkdir(parents=True, exist_ok=True)
    # Tune warns on every forced snapshot (num_to_keep=1 forces one per checkpoint): by design here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    study.check_storage(scfg.storage_path)   # one line, not pyarrow's traceback, before anything starts
    exists = tune.Tuner.can_restore(scfg.study_dir)
    if exists and not scfg.resume:
        raise StudyExists(f"a study named {scfg.name!r} already exists at {scfg.study_dir}: add "
                          "--resume to continue it, or pick another --name")
    if scfg.resume and not exists:
        raise StudyExists(f"nothing to resume at {scfg.study_dir}")
    tracker = None
    if not scfg.no_tracking:
        uri = scfg.tracking_uri or tracking.default_tracking_uri(scfg.results_dir)
        tracking.check_tracking_uri(uri)
        tracker = tracking.StudyTracker(uri, scfg.experiment, scfg.study_dir,
                                        artifact_root=str(scfg.results_dir / "mlartifacts"))
    timings["tracking_s"] = time.perf_counter() - clock
    started_here = not ray.is_initialized()
    if started_here:
        reap_ray_on_exit()   # a SIGKILLed driver must not leave its embedded Ray's agents behind
    # Ray starts (seconds of process launches and waiting) while other threads generate and audit
    # the data and open the tracking store (importing mlflow, creating a new store's tables);
    # ray.init stays on the main thread (it installs the SIGTERM handler there)
    with ThreadPoolExecutor(2, thread_name_prefix="multifair-prepare") as pool:
        data = pool.submit(_prepare_data, scfg)
        store = pool.submit(tracker.open) if tracker is not None else None   # import + migrations
        clock = time.perf_counter()
        init_ray(scfg)
        timings["ray_start_s"] = time.perf_counter() - clock
        try:
            # a trial nothing can hold would wait forever: refused here; the autoscaler starts
            # the trials' nodes now, while the data and the tracking store are prepared
            request(scfg, check_room(scfg))
            synthetic, cfg, prepared, timings["data_s"] = data.result()
            if prepared is None:   # the cluster prepares the data, now that Ray is up
                clock = time.perf_counter()
                prepared = dataprep.for_search(scfg, cfg)
                timings["data_s"] += time.perf_counter() - clock
            if store is not None:
                timings["tracking_s"] += store.result()
        except BaseException:
            release()            # no nodes kept for a search that will not run
            if started_here:
                ray.shutdown()   # bad data: refuse it without leaving this study's Ray behind
            raise
    if scfg.resume:
        setup = study.read_study(scfg.study_dir)["setup"]   # the study's own constants, not today's flags
    else:
        rungs = asha_rungs(scfg.grace_period, scfg.reduction_factor, scfg.max_epochs) \
            if scfg.scheduler != "none" else []
        setup = {"base": cfg.to_dict(), "synthetic": synthetic,
                 "test_hooks": {**scfg.test_hooks, "baseline": dict(scfg.baseline)},
                 "checkpoints": checkpoint_policy(scfg.checkpoint_every, rungs)}
    setup["card_path"] = str(prepared["card_path"])   # this machine's dataset card (counts only)
    if prepared.get("prepared"):   # the shards' manifest: trials pull it (search/run/dataprep.py)
        setup["prepared"] = prepared["prepared"]
    return tracker, setup, cfg


def _prepare_data(scfg: SearchConfig):
    """Generated data if no --data-root, the base config, the audited cache (trials find it built):
    (synthetic spec, cfg, prepare() summary, seconds). The summary is None where the cluster
    prepares the data (dataprep.wanted): that job needs Ray, started meanwhile."""
    clock = time.perf_counter()
    synthetic = None if scfg.data_root else generate_data(scfg)
    cfg = base_config(scfg)
    prepared = None if dataprep.wanted(scfg) else prepare(cfg)
    return synthetic, cfg, prepared, time.perf_counter() - clock
