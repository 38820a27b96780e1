"""One Tune trial = one trainer fit. Reports once per epoch with a checkpoint, resumes from the
last checkpoint when Tune retries or restores the trial.

The trial's config holds only the five hyperparameters (sampled by Optuna). The constants come
through tune.with_parameters as `setup`: "base" (the fixed TrainConfig as a dict), "synthetic"
(how to regenerate the generated dataset on a node that lacks it) and "test_hooks".
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from search.space import RANGES

def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"


METRIC = "es_auc"   # a plain top-level key: what ASHA and Optuna read
MODE = "max"


class DeliberateTrialFailure(RuntimeError):
    """Raised by the fail_baseline_trial test hook."""


def resolve(config: dict, setup: dict) -> dict:
    """A trial's hyperparameters: sampled (search), or a named candidate of the confirmation
    stage ({"candidate": label, "seed": s} -> the candidate's hyperparameters, mode and seed)."""
    if "candidate" in config:
        return {**setup["candidates"][config["candidate"]], "seed": int(config["seed"])}
    return dict(config)


def trial_config(config: dict, base: dict):
    """The TrainConfig of a trial: fixed base + the mode's hyperparameters (+ mode and seed in the
    confirmation stage), test split untouched."""
    from trainer.config import config_from_dict

    base = dict(base)
    base.update({k: config[k] for k in ("mode", "seed") if k in config})
    base.update({name: float(config[name]) for name in RANGES if name in config})
    base["evaluate_test"] = False   # the test split is touched once, for the chosen config
    return config_from_dict(base)


def ensure_data(cfg, synthetic: dict | None) -> None:
    """Regenerate the generated dataset on this node if absent, then build the cache (cheap when
    built; the trainer's cache is locked and idempotent)."""
    from filelock import FileLock

    from trainer.data import prepare

    if synthetic and not Path(cfg.data_root).exists():
        from trainer.data.synthetic import synthesize

        Path(cfg.data_root).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cfg.data_root) + ".lock"):
            if not Path(cfg.data_root).exists():
                synthesize(out=cfg.data_root, **synthetic)
    prepare(cfg)


def epoch_metrics(report) -> dict[str, float]:
    """Flat metrics of one epoch: namespaced trainer keys plus plain keys for the scheduler."""
    metrics = {k: float(v) for k, v in report.flat().items()}
    metrics.update(epoch=report.epoch, es_auc=float(report.val["es_auc"]),
                   auc=float(report.val["auc"]))
    return metrics


def _is_baseline(config: dict, baseline: dict) -> bool:
    return bool(baseline) and all(math.isclose(config[k], v) for k, v in baseline.items())


def newest_checkpoint(checkpoint):
    """The trial's newest complete checkpoint on storage, which can be newer than the one Tune
    restores: a SIGKILLed driver's last experiment snapshot (written at most every
    TUNE_GLOBAL_CHECKPOINT_S) can lag the trial by an epoch or more, and a trial that finished
    after it would train its last epochs again. A newer folder counts only if it holds every file
    the restored one holds (a checkpoint cut off mid-upload is skipped)."""
    if checkpoint is None:
        return None
    import posixpath

    import pyarrow.fs
    from ray import tune

    fs, path = checkpoint.filesystem, checkpoint.path
    parent, name = posixpath.split(path.rstrip("/"))
    try:
        listing = fs.get_file_info(pyarrow.fs.FileSelector(parent))
        folders = sorted(i.base_name for i in listing if i.type == pyarrow.fs.FileType.Directory
                         and i.base_name.startswith("checkpoint_") and i.base_name > name)
        needed = {i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(path))}
        for newer in reversed(folders):
            have = {i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(f"{parent}/{newer}"))}
            if needed <= have:
                return tune.Checkpoint(path=f"{parent}/{newer}", filesystem=fs)
    except OSError:
        pass
    return checkpoint


def train_trial(config: dict, setup: dict) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters(train_trial, setup=...))."""
    import ray
    from ray import tune

    from trainer.loop import fit

    config = resolve(config, setup)
    cfg = trial_config(config, setup["base"])
    ensure_data(cfg, setup.get("synthetic"))
    hooks = setup.get("test_hooks") or {}
    # Where this attempt runs and the epoch it started at: the MLflow callback tags the run with
    # its node(s) and counts epochs trained twice after a node loss (docs/search.md).
    attempt = {"node_id": ray.get_runtime_context().get_node_id()}

    def on_epoch(report):
        # Test hook (documented in docs/search.md): make the baseline trial raise on every attempt.
        if hooks.get("fail_baseline_trial") and _is_baseline(config, hooks.get("baseline", {})) \
                and report.epoch >= hooks.get("fail_at_epoch", 1):
            raise DeliberateTrialFailure(f"test hook: baseline trial fails at epoch {report.epoch}")
        with tempfile.TemporaryDirectory(prefix="multifair-ckpt-") as tmp:
            report.save_checkpoint(tmp)
            attempt.setdefault("attempt_start_epoch", report.epoch)
            tune.report({**epoch_metrics(report), **attempt}, checkpoint=tune.Checkpoint.from_directory(tmp))

    checkpoint = newest_checkpoint(tune.get_checkpoint())
    if checkpoint is None:
        fit(cfg, on_epoch=on_epoch, progress=False)
        return
    with checkpoint.as_directory() as resume_dir:
        fit(cfg, on_epoch=on_epoch, resume_from=resume_dir, progress=False)
