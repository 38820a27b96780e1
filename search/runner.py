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

from search.space import RANGES, baseline_point
from search.summary import SearchOutcome, print_summary, summarize_results

LAYOUT = {"fairvision": "fairvision", "fairvlmed": "fairvlmed"}


@dataclass
class SearchConfig:
    dataset: str
    attribute: str
    baseline: dict[str, float] = field(default_factory=dict)   # {} -> the paper's values
    mode: str = "full"
    preset: str = "paper"
    data_root: str = ""            # "" -> generate a small dataset under the results folder
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
    scheduler: str = "asha"        # asha | none (benchmarks)
    log_best_model: bool = True
    final_test: bool = True        # score the chosen trial's model on the test split, once
    verbose: int = 1
    test_hooks: dict = field(default_factory=dict)             # see docs/search.md

    def __post_init__(self):
        self.baseline = self.baseline or baseline_point(self.dataset, self.attribute)
        self.experiment = self.experiment or f"multifair-{self.dataset}-{self.attribute}"
        self.name = self.name or f"{self.dataset}-{self.attribute}-{self.mode}"
        if not self.storage_path.startswith(("s3://", "gs://")):
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        if self.grace_period > self.max_epochs:
            raise ValueError(f"--grace-period {self.grace_period} exceeds --max-epochs {self.max_epochs}")

    @property
    def results_dir(self) -> Path:
        """Local folder for the sqlite store and generated data (storage may be remote)."""
        if self.storage_path.startswith(("s3://", "gs://")):
            return Path("multifair-results").resolve()
        return Path(self.storage_path)

    @property
    def study_dir(self) -> str:
        # s3://bucket/p?endpoint_override=...: the study folder goes before the query options
        base, sep, query = self.storage_path.partition("?")
        return f"{base.rstrip('/')}/{self.name}{sep}{query}"


# -- command line ---------------------------------------------------------------------------
def parse_args(dataset: str, attribute: str, baseline: dict | None, argv=None) -> SearchConfig:
    defaults = SearchConfig(dataset, attribute, dict(baseline or {}))
    p = argparse.ArgumentParser(description=f"MultiFair hyperparameter search: {dataset} / {attribute}")
    add = p.add_argument
    add("--data-root", default="", help="dataset root (absent: generate a small synthetic one)")
    add("--preset", default=defaults.preset, choices=["paper", "tiny"])
    add("--mode", default=defaults.mode, choices=["baseline", "modality", "fairness", "full"])
    add("--num-samples", type=int, default=defaults.num_samples, help="number of trials")
    add("--max-epochs", type=int, default=defaults.max_epochs)
    add("--grace-period", type=int, default=defaults.grace_period, help="ASHA: first rung (epochs)")
    add("--reduction-factor", type=int, default=defaults.reduction_factor)
    add("--max-concurrent", type=int, default=0, help="0: as many as the resources hold")
    add("--cpus-per-trial", type=float, default=defaults.cpus_per_trial)
    add("--gpus-per-trial", type=float, default=defaults.gpus_per_trial, help="fractions allowed")
    add("--max-failures", type=int, default=defaults.max_failures, help="retries per trial")
    add("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI or sqlite under --storage-path")
    add("--no-tracking", action="store_true", help="skip MLflow; fill it later with search.relog")
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
    from search.tracking import TrackingUnavailable

    scfg = parse_args(dataset, attribute, baseline, argv)
    try:
        outcome = run_search(scfg)
    except (StudyExists, TrackingUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_summary(scfg, outcome)
    if outcome.interrupted:
        return 130
    return 0 if outcome.best is not None else 1


# -- the search -----------------------------------------------------------------------------
class StudyExists(RuntimeError):
    pass


def base_config(scfg: SearchConfig):
    """The fixed trainer configuration of every trial (the baseline point's hyperparameters)."""
    from trainer.config import make_config

    return make_config(scfg.dataset, scfg.attribute, preset=scfg.preset, sets=scfg.sets,
                       data_root=scfg.data_root, mode=scfg.mode, epochs=scfg.max_epochs,
                       seed=scfg.seed, evaluate_test=False,
                       max_gpu_memory_fraction=scfg.gpus_per_trial if 0 < scfg.gpus_per_trial < 1 else 1.0,
                       **scfg.baseline)


def generate_data(scfg: SearchConfig) -> dict:
    """Write a small synthetic dataset under the results folder, loudly."""
    from trainer.data.synthetic import synthesize

    n_train, n_val, n_test = scfg.synthetic_sizes
    spec = dict(layout=LAYOUT[scfg.dataset], n_train=n_train, n_val=n_val, n_test=n_test, seed=scfg.seed)
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
    kwargs = dict(num_cpus=scfg.num_cpus or os.cpu_count())
    if scfg.num_gpus >= 0:
        kwargs["num_gpus"] = scfg.num_gpus
    ray.init(address="local", include_dashboard=False, **kwargs)
    print(f"[search] embedded Ray: {ray.cluster_resources()}", flush=True)


def max_concurrent(scfg: SearchConfig) -> int:
    if scfg.max_concurrent > 0:
        return scfg.max_concurrent
    import ray

    res = ray.cluster_resources()
    fits = int(res.get("CPU", 1) // max(scfg.cpus_per_trial, 1e-9))
    if scfg.gpus_per_trial > 0:
        fits = min(fits, int(res.get("GPU", 0) / scfg.gpus_per_trial + 1e-9))
    return max(1, min(fits, scfg.num_samples))


def make_searcher(scfg: SearchConfig):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if scfg.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=scfg.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=scfg.seed, multivariate=True, constant_liar=True)
    # metric/mode belong to TuneConfig only (stack.md); the paper's point is evaluated first.
    return OptunaSearch(sampler=sampler, points_to_evaluate=[dict(scfg.baseline)])


def make_scheduler(scfg: SearchConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if scfg.scheduler == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=scfg.max_epochs,
                         grace_period=scfg.grace_period, reduction_factor=scfg.reduction_factor)


def run_search(scfg: SearchConfig) -> SearchOutcome:
    from ray import tune

    from search import tracking
    from search.trainable import train_trial

    started = time.time()
    scfg.results_dir.mkdir(parents=True, exist_ok=True)
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

    synthetic = None if scfg.data_root else generate_data(scfg)
    cfg = base_config(scfg)
    from trainer.data import prepare

    prepare(cfg)   # once on this machine; trials find the cache built
    import ray

    if not ray.is_initialized():
        from search.reaper import reap_ray_on_exit

        reap_ray_on_exit()   # a SIGKILLed driver must not leave its embedded Ray's agents behind
    init_ray(scfg)

    if scfg.resume:
        setup = read_study_file(scfg.study_dir)["setup"]   # the study's own constants, not today's flags
    else:
        setup = {"base": cfg.to_dict(), "synthetic": synthetic,
                 "test_hooks": {**scfg.test_hooks, "baseline": dict(scfg.baseline)}}
        write_study_file(scfg, setup)
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup),
                                    {"cpu": scfg.cpus_per_trial, "gpu": scfg.gpus_per_trial})
    if scfg.resume:
        print(f"[search] resuming {scfg.study_dir}", flush=True)
        from search.resume import repair_stale_checkpoints

        repair_stale_checkpoints(scfg.study_dir)   # a killed driver's snapshot can lag its trials
        tuner = tune.Tuner.restore(scfg.study_dir, trainable, resume_errored=True)
        callback = _find_callback(tuner)   # the study's own tracker (same store, same parent run)
        tracker = callback.tracker if callback else tracker
    if tracker is not None:
        tracker.start_study(tags=study_tags(scfg), params=study_params(scfg))
        print(f"[search] MLflow: {tracker.tracking_uri} experiment {tracker.experiment_id} "
              f"parent run {tracker.parent_run_id}", flush=True)
    if not scfg.resume:
        tuner = _new_tuner(scfg, setup, trainable, tracker)

    results = tuner.fit()
    outcome = summarize_results(scfg, results, tracker, time.time() - started)
    if tracker is not None:
        tracker.end_study("KILLED" if outcome.interrupted else "FINISHED",
                          tags={"interrupted": str(outcome.interrupted).lower(),
                                "trials_stopped_early": outcome.stopped_early,
                                "trials_failed": outcome.failed,
                                "best_trial_id": (outcome.best or {}).get("trial_id", "")})
    return outcome


STUDY_FILE = "study.json"


def write_study_file(scfg: SearchConfig, setup: dict) -> None:
    """The study's search settings and trial constants, next to Tune's own state (relog and
    resume read it; works for local folders and s3://)."""
    import json

    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(scfg.study_dir)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{STUDY_FILE}") as f:
        f.write(json.dumps({"search": dataclasses.asdict(scfg), "setup": setup}, indent=1).encode())


def read_study_file(study_dir: str) -> dict:
    import json

    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(study_dir)
    with fs.open_input_stream(f"{path}/{STUDY_FILE}") as f:
        return json.loads(f.read().decode())


def _new_tuner(scfg, setup, trainable, tracker):
    from ray import tune

    from search.progress import ProgressCallback
    from search.space import param_space
    from search.tracking import MLflowTrialCallback
    from search.trainable import METRIC, MODE, trial_dirname

    callbacks = [ProgressCallback(scfg.max_epochs)]
    if tracker is not None:
        callbacks.append(MLflowTrialCallback(tracker, scfg.max_epochs, study_tags(scfg), setup["base"]))
    return tune.Tuner(
        trainable, param_space=param_space(),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=make_searcher(scfg),
                                    scheduler=make_scheduler(scfg), num_samples=scfg.num_samples,
                                    max_concurrent_trials=max_concurrent(scfg),
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=scfg.name, storage_path=scfg.storage_path, callbacks=callbacks, verbose=scfg.verbose,
            failure_config=tune.FailureConfig(max_failures=scfg.max_failures),
            # The two most recent checkpoints: every checkpoint holds the best epoch's weights so
            # far (trainer BEST_FILE), and a SIGKILLed driver's snapshot may name the one before
            # the latest. Keeping by score instead deleted exactly that one (seen on S3).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


def _find_callback(tuner):
    from search.tracking import MLflowTrialCallback

    run_config = tuner._local_tuner.get_run_config()
    for cb in run_config.callbacks or []:
        if isinstance(cb, MLflowTrialCallback):
            return cb
    return None


def study_tags(scfg: SearchConfig) -> dict[str, str]:
    from search.tracking import git_commit

    return {"dataset": scfg.dataset, "attribute": scfg.attribute, "mode": scfg.mode,
            "seed": str(scfg.seed), "git_commit": git_commit(), "preset": scfg.preset,
            "searcher": scfg.searcher, "scheduler": scfg.scheduler}


def study_params(scfg: SearchConfig) -> dict[str, str]:
    keep = ("num_samples", "max_epochs", "grace_period", "reduction_factor", "cpus_per_trial",
            "gpus_per_trial", "max_failures", "seed", "searcher", "scheduler", "preset", "mode")
    params = {k: str(getattr(scfg, k)) for k in keep}
    params.update({f"range.{k}": f"[{r.low}, {r.high}]{' log' if r.log else ''}" for k, r in RANGES.items()})
    params.update({f"baseline.{k}": str(v) for k, v in scfg.baseline.items()})
    return params


