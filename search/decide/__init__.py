"""The decide stage: the rule (search.decide.rule, a pure function of a results table, also
`python -m search.decide --table runs.csv`) and the stage that runs it after the search
(search.decide.stage: confirmation, test split, registry, figures, report), with its parts:
selection (select: best, front, finalists), the confirmation (confirm), the paired test
(paired), the Ray tasks they run on the cluster (remote), the registered champion (registry,
mlmodel); the expected best score as a function of the number of trials (expected_max)."""
from __future__ import annotations


def decide(scfg, setup: dict, trials: list[dict], tracker, auc_floor: float | None) -> dict:
    """search.decide.stage.decide (imported on call: the rule's CLI stays free of Ray and torch)."""
    from search.decide.stage import decide as stage

    return stage(scfg, setup, trials, tracker, auc_floor)
