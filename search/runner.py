"""The search service: Optuna TPE + ASHA over the MultiFair trainer on Ray Tune, every trial in
MLflow. Entry scripts call `main(dataset, attribute, baseline)`; tests and benchmarks build a
`SearchConfig` and call `run_search`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from search.record.space import baseline_point
from search.decide.scoring import summarize_results
from search.record.summary import SearchOutcome, print_summary


@dataclass
class SearchConfig:
    dataset: str
    attribute: str
    baseline: dict[str, float] = field(default_factory=dict)   # {} -> the paper's values
    mode: str = "full"
    preset: str = "paper"
    data_root: str = ""            # "" -> generate a small dataset under the results folder
    prepare_on_cluster: bool = False   # s3:// data roots always are (search/run/dataprep.py)
    synthetic_sizes: tuple[int, int, int] = (192, 96, 96)
    sets: list[str] = field(default_factory=list)              # trainer --set key=value
    num_samples: int = 16
    max_epochs: int = 10
    grace_period: int = 2          # epoch-1 validation ES-AUC is mostly noise (docs/search.md)
    reduction_factor: int = 3
    max_concurrent: int = 0        # 0 -> as many trials as the resources hold (at least 1)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 2
    checkpoint_every: int = 5      # exact-resume state every K epochs (0: never); best model at rungs and the end
    tracking_uri: str = ""         # "" -> MLFLOW_TRACKING_URI or sqlite under the results folder
    no_tracking: bool = False
    experiment: str = ""           # "" -> multifair-<dataset>-<attribute>
    storage_path: str = "multifair-results"
    name: str = ""                 # "" -> <dataset>-<attribute>-<mode>
    resume: bool = False
    seed: int = 0
    local: bool = False
    num_cpus: int = 0              # with --local; 0 -> all of this machine's
    num_gpus: int = -1             # with --local; -1 -> detect
    searcher: str = "tpe"          # tpe | random (benchmarks)
    scheduler: str = "asha"        # asha (MO-ASHA for pareto/constrained) | asha_es_auc | none
    log_best_model: bool = True
    final_test: bool = True        # score the chosen trial's model on the test split, once
    objective: str = "es_auc"      # es_auc | pareto | constrained (search/run/objectives.py)
    min_auc_drop: float | None = None   # constrained (and the confirmation's AUC floor)
    objectives: str = ""           # pareto's, e.g. es_auc,es_auc_missing_oct ("" -> auc,es_auc)
    min_missing_es_auc: str = ""   # floors, e.g. oct=0.6: val ES-AUC without the OCT >= 0.6
    shift_root: str = ""           # another site's data (same layout): the final test scores it too
    finalists: int = 3             # 0: no confirmation stage (the best search trial is tested)
    confirm_seeds: int = 3
    confirm_budget: int = 0        # extra seeds per undecided candidate (confirm.looks)
    confirm_folds: int = 0         # K >= 2: each confirmation repeat re-splits train+val too (K folds)
    alpha: float = 0.05            # the decision's familywise error (search/decide/rule.py)
    min_gain: float = 0.0          # validation ES-AUC gain over plain fusion a candidate must show
    register_name: str = ""        # "" -> multifair-<dataset>-<attribute>
    figures: bool = True
    warm_start: str = ""           # an earlier study folder or MLflow experiment (search/run/warm_start.py)
    verbose: int = 1
    test_hooks: dict = field(default_factory=dict)             # see docs/search.md

    def __post_init__(self):
        from search.record.space import hyperparameters

        # The entry scripts pass the paper's point, MultiFair's five; a method that searches
        # other hyperparameters (--mode ogm_ge: ogm_alpha) starts from its own default instead.
        names = hyperparameters(self.mode)
        if self.baseline and set(names) <= set(self.baseline):
            self.baseline = {k: float(self.baseline[k]) for k in names}
        else:
            self.baseline = baseline_point(self.dataset, self.attribute, self.mode, self.preset)
        self.experiment = self.experiment or f"multifair-{self.dataset}-{self.attribute}"
        self.name = self.name or f"{self.dataset}-{self.attribute}-{self.mode}"
        if not self.storage_path.startswith(("s3://", "gs://")):
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        self.register_name = self.register_name or f"multifair-{self.dataset}-{self.attribute}"
        if self.shift_root and "://" not in self.shift_root:   # trials and tasks run elsewhere
            self.shift_root = str(Path(self.shift_root).expanduser().resolve())
        check(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def results_dir(self) -> Path:
        """Local folder for the sqlite store and generated data (storage may be remote)."""
        if self.storage_path.startswith(("s3://", "gs://")):
            return Path("multifair-results").resolve()
        return Path(self.storage_path)

    @property
    def study_dir(self) -> str:
        from search.record.study import stage_path

        return stage_path(self.storage_path, self.name)


class BadFlag(ValueError):
    """A search flag that cannot work: one line naming the flag and the fix."""


def check(scfg: SearchConfig) -> None:
    from search.run.objectives import OBJECTIVES, PARETO, BadObjective, missing_floors, objective_keys

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise BadFlag(message)

    def named(flag: str, read):
        try:
            return read(scfg)
        except BadObjective as exc:
            raise BadFlag(f"{flag} {exc}") from None

    need(scfg.num_samples >= 1, f"--num-samples {scfg.num_samples}: give at least 1 trial")
    need(scfg.max_epochs >= 1, f"--max-epochs {scfg.max_epochs}: give at least 1 epoch")
    need(scfg.grace_period >= 1, f"--grace-period {scfg.grace_period}: give at least 1 epoch")
    need(scfg.grace_period <= scfg.max_epochs or scfg.scheduler == "none",
         f"--max-epochs {scfg.max_epochs} is below the ASHA --grace-period {scfg.grace_period}: "
         f"raise --max-epochs or pass --grace-period {scfg.max_epochs}")
    need(scfg.reduction_factor >= 2, f"--reduction-factor {scfg.reduction_factor}: must be 2 or more")
    need(scfg.scheduler in ("asha", "asha_es_auc", "none"),
         f"scheduler {scfg.scheduler!r}: choose asha, asha_es_auc or none")
    need(scfg.objective in OBJECTIVES, f"--objective {scfg.objective}: choose one of {', '.join(OBJECTIVES)}")
    need(scfg.objective != "constrained" or scfg.min_auc_drop is not None,
         "--objective constrained needs --min-auc-drop X (AUC may fall at most X below plain fusion's)")
    keys, floors = named("--objectives", objective_keys), named("--min-missing-es-auc", missing_floors)
    need(scfg.objective == "pareto" or scfg.objectives in ("", PARETO), f"--objectives {scfg.objectives}: "
         f"only --objective pareto trades objectives off (--objective {scfg.objective} maximises "
         "validation ES-AUC); add --objective pareto, or --min-missing-es-auc for a floor")
    need(len(keys) >= 2 and len(set(keys)) == len(keys), f"--objectives {scfg.objectives}: give two or "
         "more distinct objectives, e.g. es_auc,es_auc_missing_oct")
    need(not scfg.warm_start or (not floors and keys == ["auc", "es_auc"]), f"--warm-start {scfg.warm_start}: "
         "an earlier study seeds only the default objectives (no --objectives, no --min-missing-es-auc)")
    need(not scfg.shift_root or "://" in scfg.shift_root or Path(scfg.shift_root).is_dir(),
         f"--shift-root {scfg.shift_root}: no such folder (another site's data root, same layout)")
    need(scfg.min_auc_drop is None or 0 <= scfg.min_auc_drop < 1,
         f"--min-auc-drop {scfg.min_auc_drop}: give an AUC difference in [0, 1), e.g. 0.01")
    need(scfg.finalists >= 0, f"--finalists {scfg.finalists}: give 0 (no confirmation) or more")
    need(scfg.confirm_seeds >= 2 or scfg.finalists == 0, f"--confirm-seeds {scfg.confirm_seeds}: give at "
         "least 2 (one seed gives no interval, so no candidate could be shown better than plain fusion)")
    need(0 < scfg.alpha < 1, f"--alpha {scfg.alpha}: give a familywise error level in (0, 1), e.g. 0.05")
    need(scfg.confirm_budget >= 0, f"--confirm-budget {scfg.confirm_budget}: give 0 or more seeds")
    need(scfg.confirm_folds == 0 or scfg.confirm_folds >= 2, f"--confirm-folds {scfg.confirm_folds}: give 0 "
         "(every repeat on the given train/val split) or K >= 2 folds of train+val")
    need(scfg.cpus_per_trial > 0, f"--cpus-per-trial {scfg.cpus_per_trial}: must be positive")
    need(scfg.max_failures >= 0, f"--max-failures {scfg.max_failures}: must be 0 or more")
    need(scfg.checkpoint_every >= 0, f"--checkpoint-every {scfg.checkpoint_every}: give 0 (no resume "
         "state) or a number of epochs")


# -- command line ---------------------------------------------------------------------------
def parse_args(dataset: str, attribute: str, baseline: dict | None, argv=None) -> SearchConfig:
    defaults = SearchConfig(dataset, attribute, dict(baseline or {}))
    p = argparse.ArgumentParser(description=f"MultiFair hyperparameter search: {dataset} / {attribute}")
    add = p.add_argument
    add("--data-root", default="", help="dataset root, a folder or s3://bucket/prefix?options "
        "(absent: generate a small synthetic one)")
    add("--prepare-on-cluster", action="store_true", help="prepare a local --data-root with a Ray "
        "job over the whole cluster (every node must see the path); s3:// roots always are")
    add("--preset", default=defaults.preset, choices=["paper", "tiny"])
    from trainer.methods import available_methods
    add("--mode", default=defaults.mode, choices=available_methods(),
        help="training method (docs/methods.md); each has its own searched hyperparameters")
    add("--num-samples", type=int, default=defaults.num_samples, help="number of trials")
    add("--max-epochs", type=int, default=defaults.max_epochs)
    add("--grace-period", type=int, default=defaults.grace_period, help="ASHA: first rung (epochs)")
    add("--reduction-factor", type=int, default=defaults.reduction_factor)
    add("--scheduler", default=defaults.scheduler, choices=["asha", "asha_es_auc", "none"],
        help="early stopping: asha (ES-AUC ASHA, or MO-ASHA over AUC and ES-AUC for pareto and "
             "constrained), asha_es_auc (ES-AUC ASHA for every objective), none (every trial trains "
             "every epoch); what each keeps: docs/search-quality.md")
    add("--max-concurrent", type=int, default=0, help="0: as many as the cluster holds at its largest "
        "(an autoscaler's maximum size, else the nodes present; docs/scaling.md)")
    add("--cpus-per-trial", type=float, default=defaults.cpus_per_trial)
    add("--gpus-per-trial", type=float, default=defaults.gpus_per_trial, help="fractions allowed")
    add("--max-failures", type=int, default=defaults.max_failures, help="retries per trial")
    add("--checkpoint-every", type=int, default=defaults.checkpoint_every, metavar="K",
        help="write the exact-resume state (weights + optimiser, ~2 GiB at the paper preset) every K "
             "epochs; a failed or resumed trial repeats at most K-1 epochs. The best model (weights "
             "only, bf16) is kept at ASHA's rungs and the last epoch. 0: never (a lost trial starts over)")
    add("--objective", default=defaults.objective, choices=["es_auc", "pareto", "constrained"],
        help="es_auc: max validation ES-AUC; pareto: front over (AUC, ES-AUC); constrained: max "
             "ES-AUC with AUC >= plain fusion's - --min-auc-drop")
    add("--objectives", default="", metavar="A,B[,C]", help="what --objective pareto trades off "
        "(default auc,es_auc): auc, es_auc, and per modality auc_missing_<m> / es_auc_missing_<m> "
        "(validation with m removed from every sample), e.g. es_auc,es_auc_missing_oct")
    add("--min-missing-es-auc", default="", metavar="M=X[,M2=Y]", help="floor on the validation "
        "ES-AUC with modality M removed: trials below are infeasible (any --objective), e.g. oct=0.6")
    add("--shift-root", default="", metavar="DIR", help="another site's data root in the same layout: "
        "the final test also scores the deployed model on its test split (docs/search.md)")
    add("--min-auc-drop", type=float, default=None, help="AUC floor below plain fusion (constrained; "
        "also applied when choosing among the confirmed finalists)")
    add("--finalists", type=int, default=defaults.finalists, help="configurations re-trained with "
        "fresh seeds, plus the paper's point and plain fusion (0: skip)")
    add("--warm-start", default="", metavar="STUDY_OR_EXPERIMENT",
        help="seed the sampler with an earlier study's trials (same --mode and kind of --objective; "
             "another attribute or site is fine): its folder or its MLflow experiment name")
    add("--confirm-seeds", type=int, default=defaults.confirm_seeds, help="seeds per finalist (>= 2)")
    add("--confirm-budget", type=int, default=0, help="up to this many more seeds for candidates "
        "still undecided after the first --confirm-seeds (0: none)")
    add("--confirm-folds", type=int, default=0, metavar="K", help="each confirmation repeat also "
        "re-splits train+val: K group-stratified folds, repeat r validates on fold r mod K (test split "
        "untouched; 0: seeds only)")
    add("--alpha", type=float, default=defaults.alpha, help="familywise error of the deployment decision")
    add("--min-gain", type=float, default=defaults.min_gain, help="validation ES-AUC gain over plain "
        "fusion a candidate must be shown to exceed")
    add("--register-name", default="", help="registered model name (default multifair-<dataset>-<attribute>)")
    add("--no-figures", dest="figures", action="store_false", help="skip the sensitivity figures")
    add("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite under --storage-path")
    add("--no-tracking", action="store_true", help="skip MLflow; fill it later with search.record.relog")
    add("--experiment", default="", help="MLflow experiment name")
    add("--storage-path", default=defaults.storage_path, help="results folder or s3://bucket/path")
    add("--name", default="", help="study name (folder under --storage-path)")
    add("--resume", action="store_true", help="continue an interrupted study of the same --name")
    add("--seed", type=int, default=defaults.seed)
    add("--local", action="store_true", help="embedded Ray even where a cluster runs")
    add("--num-cpus", type=int, default=0, help="with --local")
    add("--num-gpus", type=int, default=-1, help="with --local")
    add("--no-final-test", dest="final_test", action="store_false",
        help="do not score the chosen trial on the test split at the end")
    add("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="trainer config override (repeatable)")
    a = vars(p.parse_args(argv))
    return SearchConfig(dataset=dataset, attribute=attribute, baseline=dict(baseline or {}), **a)


def main(dataset: str, attribute: str, baseline: dict | None = None, argv=None) -> int:
    from search.record.tracking import TrackingUnavailable

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
    from trainer.config import make_config

    return make_config(scfg.dataset, scfg.attribute, preset=scfg.preset, sets=scfg.sets,
                       data_root=scfg.data_root, mode=scfg.mode, epochs=scfg.max_epochs,
                       seed=scfg.seed, evaluate_test=False,
                       **({"shift_root": scfg.shift_root} if scfg.shift_root else {}),
                       max_gpu_memory_fraction=scfg.gpus_per_trial if 0 < scfg.gpus_per_trial < 1 else 1.0,
                       **scfg.baseline)


def generate_data(scfg: SearchConfig) -> dict:
    """Write a small synthetic dataset under the results folder, loudly."""
    from trainer.data.synthetic import synthesize

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
    import ray

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
    from search.run.embedded_ray import init_local_ray

    # every worker imports the trainer as it starts (search.run.trainable.preimport), off the trials' path
    init_local_ray(scfg.num_cpus or os.cpu_count(), scfg.num_gpus if scfg.num_gpus >= 0 else None,
                   runtime_env={"worker_process_setup_hook": "search.run.trainable.preimport"})
    print(f"[search] embedded Ray (loopback only): {ray.cluster_resources()}", flush=True)


def run_search(scfg: SearchConfig) -> SearchOutcome:
    """Prepare (store, data, Ray) -> search -> summarise -> decide (confirm, test, register,
    figures, report). Each stage is its own module."""
    from search.record import study
    from search.decide import decide
    from search.run.stage import search

    started = time.time()
    timings: dict[str, float] = {}
    if scfg.warm_start and not scfg.resume:     # refuse another space or objective before any work
        from search.run import warm_start

        print(f"[search] warm start: {len(warm_start.load(scfg))} trials of {scfg.warm_start} "
              "seed the sampler", flush=True)
    tracker, setup, cfg = prepare_study(scfg, timings)
    auc_floor = None
    if scfg.objective == "constrained":
        from search.run.objectives import reference_auc

        setup["reference_auc"] = setup.get("reference_auc") or reference_auc(cfg, scfg, setup)
        auc_floor = setup["reference_auc"] - scfg.min_auc_drop
        print(f"[search] plain fusion's validation AUC {setup['reference_auc']:.4f}: AUC floor "
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
        from search.decide.confirm import StageStopped

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
    from ray import tune

    timings = {} if timings is None else timings
    clock = time.perf_counter()

    from search.record import study, tracking   # their import (MLflow) counts in tracking_s
    from search.run import dataprep

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
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        from search.run.reaper import reap_ray_on_exit

        reap_ray_on_exit()   # a SIGKILLed driver must not leave its embedded Ray's agents behind
    # Ray starts (seconds of process launches and waiting) while other threads generate and audit
    # the data and open the tracking store (importing mlflow, creating a new store's tables);
    # ray.init stays on the main thread (it installs the SIGTERM handler there)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2, thread_name_prefix="multifair-prepare") as pool:
        data = pool.submit(_prepare_data, scfg)
        store = pool.submit(tracker.open) if tracker is not None else None   # import + migrations
        clock = time.perf_counter()
        init_ray(scfg)
        timings["ray_start_s"] = time.perf_counter() - clock
        try:
            from search.run.cluster_size import check_room, request

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
            from search.run.cluster_size import release

            release()            # no nodes kept for a search that will not run
            if started_here:
                ray.shutdown()   # bad data: refuse it without leaving this study's Ray behind
            raise
    if scfg.resume:
        setup = study.read_study(scfg.study_dir)["setup"]   # the study's own constants, not today's flags
    else:
        from search.run.trainable import asha_rungs, checkpoint_policy

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
    from search.run import dataprep
    from trainer.data import prepare

    clock = time.perf_counter()
    synthetic = None if scfg.data_root else generate_data(scfg)
    cfg = base_config(scfg)
    prepared = None if dataprep.wanted(scfg) else prepare(cfg)
    return synthetic, cfg, prepared, time.perf_counter() - clock
