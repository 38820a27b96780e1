"""Searched hyperparameters per training method (`--mode`): ranges (each contains the paper's or
the method's default value) and the baseline point. docs/search.md gives the reasoning behind
the MultiFair ranges, docs/methods.md the comparison methods'.

HYPERPARAMETERS, param_space(), optuna_distributions() and baseline_point() without a mode mean
MultiFair's five (the `full` mode), as before methods became a dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainer.config import paper_settings

HYPERPARAMETERS = ("rho", "lambda_gm", "tau", "delta", "lambda_f")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool
    why: str
    integer: bool = False   # an integer knob: Tune's (log)randint, Optuna's IntDistribution

    def cast(self, value):
        """`value` (a float from JSON, a string from MLflow params) as this knob's type."""
        return int(round(float(value))) if self.integer else float(value)


RANGES: dict[str, Range] = {
    # B_m = rho * (share of the other modalities' speed): rho is the overall gain on the encoder
    # gradients; below ~0.5 the encoders barely learn, above 2 the effective lr doubles.
    "rho": Range(0.5, 2.0, False, "gain on encoder gradients; paper 1.2"),
    # Weight of the direction loss: spans two decades around the paper's 0.15.
    "lambda_gm": Range(0.01, 1.0, True, "weight of L_gm; paper 0.15"),
    # Trigger threshold on the fused model's group-AUC gap and divisor in F = 1 + delta*(.)/tau:
    # strictly positive (validate() refuses 0); gaps below 0.005 are noise on a validation set.
    "tau": Range(0.005, 0.2, True, "trigger threshold and divisor; paper 0.02-0.07"),
    # Strength of the fairness factor; 0 would switch group reweighting off.
    "delta": Range(0.05, 1.0, False, "fairness-factor strength; paper 0.3-0.6"),
    # Weight of the fairness loss F_G.
    "lambda_f": Range(0.05, 2.0, True, "weight of F_G; paper 0.5-0.6"),
    # --- comparison methods (docs/methods.md) ---
    # OGM-GE: 1 - tanh(alpha * ratio); at 2 a ratio of 1.5 already cuts the gradient by 99%.
    "ogm_alpha": Range(0.05, 2.0, True, "OGM-GE modulation strength; default 0.5"),
    # FIS: 0 = individual weights only, 1 = group weights only (authors 0.5).
    "fis_c": Range(0.0, 1.0, False, "FIS share of the group weight; authors 0.5"),
    "fis_temperature": Range(0.1, 10.0, True, "FIS softmax temperature; default 1"),
    "sinkhorn_weight": Range(0.01, 10.0, True, "weight of the group Sinkhorn divergence; default 1"),
    "modality_dropout_rate": Range(0.05, 0.7, False, "per-sample, per-modality rate; default 0.3"),
    # Methods with nothing of their own to tune search the learning rate (paper 3e-5, tiny 1e-3).
    "lr": Range(1e-5, 3e-3, True, "learning rate of the fusion model"),
    # --- vision-language family (docs/methods.md, issue 28) ---
    # FairCLIP's group-term weight: the launch script's 1e-6, the argparse default 1e-4 and
    # RobustFairCLIP's 1e-7 all inside; above 1e-3 the term dominates the CLIP loss.
    "fairclip_lambda": Range(1e-7, 1e-3, True, "weight of the group Sinkhorn terms; launch 1e-6"),
    # Sinkhorn blur on the 1-D similarity clouds: launch 1e-6 to argparse 1e-4, up to 1e-2
    # (the normalised group scores are ~1/B apart).
    "fairclip_blur": Range(1e-6, 1e-2, True, "geomloss blur; launch 1e-6, argparse 1e-4"),
    # DBPM thresholds in standard deviations: released 3 (strict); recovery measured at 1.
    "dbpm_beta_np": Range(0.5, 4.0, False, "noisy-pair threshold (sd below mean); released 3"),
    "dbpm_beta_fp": Range(0.5, 4.0, False, "faulty-pair threshold (sd above mean); released 3"),
    # DualFairVL (our reading): penalty weights around 0.1, three decades either side.
    "lambda_orth": Range(1e-3, 10.0, True, "class/group anchor orthogonality; default 0.1"),
    "lambda_proto": Range(1e-3, 10.0, True, "prototype regulariser; default 0.1"),
    # --- integer knobs of the VL family (docs/methods.md, "Searching the VL modes") ---
    # FairCLIP's extra batch per group (its loaders use the batch size, 32): D_g is a 1-D cloud
    # of this many points; below 8 it is a handful of scores, above 64 the G no-grad forwards
    # per step cost more than the step (race: 3 x 64 = 6 batches of 32).
    "fairclip_group_batch_size": Range(8, 64, True, "per-group batch of the Sinkhorn term; "
                                       "authors = batch size 32", integer=True),
    # DBPM's plain epochs before pairs are judged: at least 1 (the memory needs a loss per pair);
    # at most half of FairCLIP's 10 epochs, so mining acts on the other half.
    "dbpm_warmup_epochs": Range(1, 5, False, "epochs before mining; default 1", integer=True),
    # DualFairVL (our reading): learnable context tokens per prompt; CoCoOp's 4 to CoOp's 16.
    "vl_context_length": Range(2, 16, True, "context tokens per prompt; default 4",
                               integer=True),
}

# What a search over each method tunes. MultiFair's modes share its five (baseline has none of
# its own: its learning rate); unimodal_ensemble's one knob, the stage split, is an integer
# schedule choice rather than a strength, so its learning rate is searched (docs/methods.md).
SEARCHED: dict[str, tuple[str, ...]] = {
    "baseline": ("lr",),
    "modality": HYPERPARAMETERS, "fairness": HYPERPARAMETERS, "full": HYPERPARAMETERS,
    "full_reference": HYPERPARAMETERS,
    "ogm_ge": ("ogm_alpha",),
    "cggm": ("rho",),
    "fis": ("fis_c", "fis_temperature"),
    "sinkhorn": ("sinkhorn_weight",),
    "modality_dropout": ("modality_dropout_rate",),
    "unimodal_ensemble": ("lr",),
    "clip": ("lr",),
    "fairclip": ("lr", "fairclip_lambda", "fairclip_blur", "fairclip_group_batch_size"),
    "fairclip_dbpm": ("lr", "fairclip_lambda", "fairclip_blur", "fairclip_group_batch_size",
                      "dbpm_beta_np", "dbpm_beta_fp", "dbpm_warmup_epochs"),
    "dualfairvl": ("lr", "lambda_orth", "lambda_proto", "vl_context_length"),
}

# Knobs whose TrainConfig default 0 means "the value of another field" (the baseline point and
# the range hold the effective value).
DEFAULT_FROM = {"fairclip_group_batch_size": "batch_size"}


def hyperparameters(mode: str = "full") -> tuple[str, ...]:
    """The searched hyperparameters of a training method (a `--mode` of the trainer)."""
    from trainer.methods import method_class

    method_class(mode)      # unknown mode: one line naming it and the choices
    if mode not in SEARCHED:
        raise ValueError(f"mode {mode!r} has no search space; add it to SEARCHED in search/record/space.py")
    return SEARCHED[mode]


def param_space(mode: str = "full") -> dict:
    """Tune distributions for a method's hyperparameters (metric and mode live in TuneConfig)."""
    from ray import tune

    def domain(r: Range):
        if r.integer:    # randint's upper bound is exclusive
            return (tune.lograndint if r.log else tune.randint)(int(r.low), int(r.high) + 1)
        return (tune.loguniform if r.log else tune.uniform)(r.low, r.high)

    return {name: domain(RANGES[name]) for name in hyperparameters(mode)}


def optuna_distributions(names=HYPERPARAMETERS) -> dict:
    """The same ranges as Optuna distributions (for rebuilding a study from logged trials)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    def dist(r: Range):
        kind = IntDistribution if r.integer else FloatDistribution
        return kind(r.cast(r.low), r.cast(r.high), log=r.log)

    return {name: dist(RANGES[name]) for name in names}


def typed(config: dict) -> dict:
    """The searched knobs of `config` as their types (ints for integer knobs, else floats)."""
    return {name: RANGES[name].cast(config[name]) for name in RANGES if name in config}


def baseline_point(dataset: str, attribute: str, mode: str = "full",
                   preset: str = "paper") -> dict[str, float | int]:
    """The paper's (MultiFair) or the method's default hyperparameters: evaluated first."""
    names = hyperparameters(mode)
    if set(names) <= set(HYPERPARAMETERS):
        paper = paper_settings(dataset, attribute)
        point = {name: float(paper[name]) for name in names}
    else:
        from trainer.config import make_config

        cfg = make_config(dataset, attribute, preset=preset, mode=mode)
        point = {name: RANGES[name].cast(getattr(cfg, name)
                                         or getattr(cfg, DEFAULT_FROM.get(name, name)))
                 for name in names}
    for name, value in point.items():
        r = RANGES[name]
        assert r.low <= value <= r.high, f"default {name}={value} outside [{r.low}, {r.high}]"
    return point
