"""Selection, one owner: which search trials count and which are best. `best` (the search's best
full-length trial, the console summary's and the no-confirmation path's pick), `front` (the
validation Pareto front the report shows), `finalists` (the candidates the confirmation
re-runs). The deployed model is chosen only by search.decide.rule on the confirmation's table."""
from __future__ import annotations

import math

from search.record import study
from search.record.space import RANGES


def best(trials: list[dict], max_epochs: int) -> dict | None:
    """Best validation ES-AUC (best epoch) among trials that trained all epochs; when none did,
    among all trials (flagged full=False). `trials`: search.record.study.trial_record dicts."""
    for full in (True, False):
        pool = study.full_length(trials, max_epochs if full else 0)
        if not pool:
            continue
        t = max(pool, key=lambda t: t["val"]["es_auc"])
        return {"trial_id": t["trial_id"], "config": {k: v for k, v in t["config"].items() if k in RANGES},
                "val": t["val"], "epoch": t["best_epoch"], "full": full, "path": t.get("path")}
    return None


def value(t: dict, key: str) -> float:
    """A trial's validation figure at its best epoch (`key`: auc, es_auc or a val/... key);
    -inf when absent or undefined, so it never dominates nor passes a floor."""
    v = t["val"].get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def front(trials: list[dict], keys=("auc", "es_auc")) -> list[dict]:
    """Non-dominated trials over the validation figures `keys` (all maximised; the pareto
    objectives, search.run.objectives.objective_keys), by ES-AUC."""
    pts = [(t, [value(t, k) for k in keys]) for t in trials]
    keep = [t for t, a in pts
            if not any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for _, b in pts)]
    return sorted(keep, key=lambda t: -t["val"]["es_auc"])


def feasible(t: dict, limits: dict[str, float]) -> bool:
    """Every floor met (search.run.objectives.floors: {key: lowest value})."""
    return all(value(t, k) >= floor for k, floor in limits.items())


def finalists(scfg, trials: list[dict], auc_floor: float | None, k: int) -> list[dict]:
    """The top k full-length trials for the objective: the feasible ones first (the constrained
    objective's AUC floor, --min-missing-es-auc), among them the front first (pareto, over its
    objectives), then by validation ES-AUC."""
    from search.run.objectives import floors, objective_keys

    limits = floors(scfg, auc_floor)
    by_score = sorted(trials, key=lambda t: -t["val"]["es_auc"])
    ok = [t for t in by_score if feasible(t, limits)]
    first = front(ok, objective_keys(scfg)) if scfg.objective == "pareto" else ok
    ordered = first + [t for t in ok if t not in first] + [t for t in by_score if t not in ok]
    return ordered[:k]


def single_seed_best(trials: list[dict], max_epochs: int):
    """(trial, value) of the best validation ES-AUC (best epoch) among trials that trained every
    epoch, as search.record.analysis reads them (MLflow or a study folder); None when none did.
    What a study without a decision has: one seed, no evidence against the study's reference."""
    from search.record.analysis import trial_values

    values = trial_values(trials, max_epochs, "full")
    return max(values, key=lambda tv: tv[1]) if values else None
