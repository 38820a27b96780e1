"""What the search optimises: `--objective es_auc | pareto | constrained`.

- es_auc: maximise validation ES-AUC (single objective, as before).
- pareto: Optuna multi-objective over validation (AUC, ES-AUC); the study's best_trials are the
  Pareto front. metric/mode go to OptunaSearch and ASHA themselves, NOT to TuneConfig (which
  would silently make the study single-objective, docs/stack.md).
- constrained: maximise ES-AUC subject to AUC >= reference AUC - --min-auc-drop, with Optuna's
  constraint support (Trial.set_constraint; OptunaSearch never calls it, hence the subclass).
  The reference AUC is plain fusion's (`--mode baseline`, same data, same epochs) validation AUC,
  measured once before the search.

Early stopping follows the objective. es_auc: ASHA on validation ES-AUC. pareto and constrained:
MO-ASHA (search/run/mo_asha.py) over validation (AUC, ES-AUC): a trial goes on past a rung when it
is in the first 1/eta of the rung's results by non-dominated sorting, so a trial the front needs
for its AUC is not stopped for a middling ES-AUC. (The constrained floor is not applied at rungs:
an early AUC is below the final one, and the floor is about the final model.)
"""
from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from search.record.study import METRIC

OBJECTIVES = ("es_auc", "pareto", "constrained")
STOP_METRIC = METRIC   # what the schedulers stop on (search.record.study.METRIC)


class WarmOptunaSearch(OptunaSearch):
    """OptunaSearch whose study starts with an earlier study's trials (`--warm-start`,
    search/run/warm_start.py), added once when the study is created (a resumed search unpickles the
    study with them already in)."""

    def __init__(self, *args, warm_trials=(), **kwargs):
        self.warm_trials = list(warm_trials)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        if getattr(self, "warm_trials", None):
            self._ot_study.add_trials(self.warm_trials)


class ConstrainedOptunaSearch(WarmOptunaSearch):
    """OptunaSearch that tells Optuna the AUC floor: feasible when auc_floor - auc <= 0.
    Like OptunaSearch's value, the result is the trial's LAST report (early for ASHA-stopped)."""

    def __init__(self, *args, auc_floor: float, **kwargs):
        self.auc_floor = auc_floor
        super().__init__(*args, **kwargs)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and not error and "auc" in result and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_constraint("auc_floor", self.auc_floor - float(result["auc"]))
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(scfg, auc_floor: float | None = None) -> OptunaSearch:
    import optuna

    if scfg.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=scfg.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=scfg.seed, multivariate=True, constant_liar=True)
    start = [dict(scfg.baseline)]     # the paper's point is evaluated first
    warm = []
    if scfg.warm_start:
        from search.run import warm_start

        warm = warm_start.optuna_trials(warm_start.load(scfg), scfg.mode, scfg.objective, auc_floor)
    if scfg.objective == "pareto":
        return WarmOptunaSearch(metric=["auc", "es_auc"], mode=["max", "max"], sampler=sampler,
                                points_to_evaluate=start, warm_trials=warm)
    if scfg.objective == "constrained":
        return ConstrainedOptunaSearch(sampler=sampler, points_to_evaluate=start, auc_floor=auc_floor,
                                       warm_trials=warm)
    return WarmOptunaSearch(sampler=sampler, points_to_evaluate=start, warm_trials=warm)


def make_scheduler(scfg):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search.run.mo_asha import MOASHAScheduler

    if scfg.scheduler == "none":
        return FIFOScheduler()
    # time = the trainer's epoch, not Tune's report count: a trial resumed from an older checkpoint
    # (or from scratch) reports its epochs again, and its rungs stay where its epochs are
    rungs = dict(time_attr="epoch", max_t=scfg.max_epochs, grace_period=scfg.grace_period,
                 reduction_factor=scfg.reduction_factor)
    if scfg.objective in ("pareto", "constrained") and scfg.scheduler == "asha":
        return MOASHAScheduler(metrics=("auc", STOP_METRIC), modes=("max", "max"), **rungs)
    # single objective, or `scheduler="asha_es_auc"` (benchmarks: ES-AUC-only ASHA on a pareto search);
    # pareto's TuneConfig holds no metric, so the scheduler is given it
    multi = scfg.objective == "pareto"
    return ASHAScheduler(**rungs, **(dict(metric=STOP_METRIC, mode="max") if multi else {}))


def tune_metric(scfg) -> dict:
    """TuneConfig's metric/mode: none for pareto (they would override the searcher's lists)."""
    return {} if scfg.objective == "pareto" else {"metric": STOP_METRIC, "mode": "max"}


def reference_auc(cfg, scfg=None, setup: dict | None = None) -> float:
    """Validation AUC of plain fusion (mode baseline) with the search's data and epochs, for the
    constrained objective's floor: one fit before the search, as a Ray task with a trial's
    resources (search.decide.remote: a GPU where trials have one; the data read on its node). It runs
    under the request the study made for the search's nodes. Without `scfg`, here."""
    if scfg is None:
        return reference_fit(cfg)
    from search.decide.remote import data_of, run

    return run(scfg, "reference fit", reference_fit, cfg, data_of(setup), reserve=False)


def reference_fit(cfg, data: dict | None = None) -> float:
    """The reference fit itself (in the task): the validation AUC only comes back."""
    from trainer.loop import fit

    cfg = cfg.replace(mode="baseline", evaluate_test=False)
    if data is not None:
        from search.decide.remote import datasets

        return float(fit(cfg, progress=False, datasets=datasets(cfg, data))["val"]["auc"])
    return float(fit(cfg, progress=False)["val"]["auc"])
