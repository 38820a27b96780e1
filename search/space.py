"""The five MultiFair hyperparameters: ranges (each contains the paper's values) and the
baseline point. docs/search.md gives the reasoning behind every range.
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
}


def param_space() -> dict:
    """Tune distributions for the five hyperparameters (metric and mode live in TuneConfig)."""
    from ray import tune

    return {name: (tune.loguniform if r.log else tune.uniform)(r.low, r.high)
            for name, r in RANGES.items()}


def optuna_distributions() -> dict:
    """The same ranges as Optuna distributions (for rebuilding a study from logged trials)."""
    from optuna.distributions import FloatDistribution

    return {name: FloatDistribution(r.low, r.high, log=r.log) for name, r in RANGES.items()}


def baseline_point(dataset: str, attribute: str) -> dict[str, float]:
    """The paper's hyperparameters for (dataset, attribute): evaluated first."""
    paper = paper_settings(dataset, attribute)
    point = {name: float(paper[name]) for name in HYPERPARAMETERS}
    for name, value in point.items():
        r = RANGES[name]
        assert r.low <= value <= r.high, f"paper value {name}={value} outside [{r.low}, {r.high}]"
    return point
