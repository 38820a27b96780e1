"""Selection, one owner: which search trials count and which are best. `best` (the search's best
full-length trial, the console summary's and the no-confirmation path's pick), `front` (the
validation Pareto front the report shows), `finalists` (the candidates the confirmation
re-runs). The deployed model is chosen only by search.decide.rule on the confirmation's table."""
from __future__ import annotations

from search.record import study
from search.run.space import RANGES


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


def front(trials: list[dict]) -> list[dict]:
    """Non-dominated full-length trials in (val AUC, val ES-AUC), both maximised, by ES-AUC."""
    pts = [(t, t["val"]["auc"], t["val"]["es_auc"]) for t in trials]
    keep = [t for t, a, e in pts
            if not any(a2 >= a and e2 >= e and (a2 > a or e2 > e) for _, a2, e2 in pts)]
    return sorted(keep, key=lambda t: -t["val"]["es_auc"])


def finalists(scfg, trials: list[dict], auc_floor: float | None, k: int) -> list[dict]:
    """The top k full-length trials for the objective: the front first (pareto), the feasible
    ones first (constrained), then by validation ES-AUC."""
    by_score = sorted(trials, key=lambda t: -t["val"]["es_auc"])
    if scfg.objective == "pareto":
        first = front(trials)
    elif scfg.objective == "constrained" and auc_floor is not None:
        first = [t for t in by_score if t["val"]["auc"] >= auc_floor]
    else:
        first = by_score
    ordered = first + [t for t in by_score if t not in first]
    return ordered[:k]
