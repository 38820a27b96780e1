"""What the search optimises: `--objective es_auc | pareto | constrained`.

- es_auc: maximise validation ES-AUC (single objective, as before).
- pareto: Optuna multi-objective over validation (AUC, ES-AUC); the study's best_trials are the
  Pareto front. metric/mode go to OptunaSearch and ASHA themselves, NOT to TuneConfig (which
  would silently make the study single-objective, docs/stack.md).
- constrained: maximise ES-AUC subject to AUC >= reference AUC - --min-auc-drop, with Optuna's
  constraint support (Trial.set_constraint; OptunaSearch never calls it, hence the subclass).
  The reference AUC is the study's reference's (search.record.reference: plain fusion, or CLIP
  for the vision-language family; same data, same epochs) validation AUC, measured once before
  the search.

Early stopping follows the objective. es_auc: ASHA on validation ES-AUC. pareto and constrained:
MO-ASHA (search/run/mo_asha.py) over validation (AUC, ES-AUC): a trial goes on past a rung when it
is in the first 1/eta of the rung's results by non-dominated sorting, so a trial the front needs
for its AUC is not stopped for a middling ES-AUC. (The constrained floor is not applied at rungs:
an early AUC is below the final one, and the floor is about the final model.)

Robustness (issue 22): `--objectives` names what pareto trades off: auc, es_auc, and per modality
m of the study auc_missing_<m> / es_auc_missing_<m> = the validation figure with m removed from
every sample (the trainer's val/missing/<m>/auc|es_auc, reported each epoch). `--min-missing-es-auc
oct=0.6` is a floor: a trial whose validation ES-AUC without the OCT is below 0.6 (or undefined) is
infeasible for Optuna (Trial.set_constraint, as the constrained objective's AUC floor) and comes
after the feasible ones when finalists are chosen (search.decide.select). MO-ASHA's rungs use the
pareto objectives; the floors are not applied at rungs (the same reason as the AUC floor).
"""
from __future__ import annotations

import math

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search.record.reference import reference_of
from search.record.study import METRIC
from search.run import warm_start
from search.run.mo_asha import MOASHAScheduler
from search.run.remote import data_of, datasets, run
from search.run.resume import snapshot_trials
from trainer.config import DEFAULT_MODALITIES

OBJECTIVES = ("es_auc", "pareto", "constrained")
STOP_METRIC = METRIC   # what the schedulers stop on (search.record.study.METRIC)
PARETO = "auc,es_auc"  # pareto's objectives unless --objectives says otherwise


class BadObjective(ValueError):
    """An objective or floor name the study cannot measure: one line naming it."""


def metric_key(name: str, modalities) -> str:
    """The per-epoch result key of an objective name: auc, es_auc as reported; auc_missing_<m>
    and es_auc_missing_<m> -> val/missing/<m>/auc|es_auc (m one of the study's modalities)."""
    if name in ("auc", "es_auc"):
        return name
    for metric in ("es_auc", "auc"):
        prefix = f"{metric}_missing_"
        if name.startswith(prefix):
            modality = name[len(prefix):]
            if modality not in modalities:
                raise BadObjective(f"{name}: unknown modality {modality!r} (this study's modalities: "
                                   f"{', '.join(modalities)})")
            if len(modalities) < 2:
                raise BadObjective(f"{name}: the study has only {modality}; nothing is left without it")
            return f"val/missing/{modality}/{metric}"
    raise BadObjective(f"{name}: unknown objective (choose auc, es_auc, auc_missing_<modality> or "
                       f"es_auc_missing_<modality>; modalities: {', '.join(modalities)})")


def study_modalities(scfg) -> tuple[str, ...]:
    """The trials' modalities: `--set modalities=a,b` or the dataset's default."""
    for item in reversed(scfg.sets):
        key, _, value = item.partition("=")
        if key.strip() == "modalities" and value.strip():
            return tuple(m.strip() for m in value.split(",") if m.strip())
    return DEFAULT_MODALITIES[scfg.dataset]


def objective_keys(scfg) -> list[str]:
    """Result keys pareto trades off (all maximised), in --objectives order."""
    names = [n.strip() for n in (scfg.objectives or PARETO).split(",") if n.strip()]
    return [metric_key(n, study_modalities(scfg)) for n in names]


def missing_floors(scfg) -> dict[str, float]:
    """--min-missing-es-auc m=x[,m2=y] as {val/missing/<m>/es_auc: x}."""
    out = {}
    for item in filter(None, (s.strip() for s in (scfg.min_missing_es_auc or "").split(","))):
        modality, sep, value = item.partition("=")
        try:
            floor = float(value)
        except ValueError:
            floor = math.nan
        if not sep or not 0 < floor < 1:
            raise BadObjective(f"{item}: give modality=floor with the floor in (0, 1), e.g. oct=0.6")
        out[metric_key(f"es_auc_missing_{modality.strip()}", study_modalities(scfg))] = floor
    return out


def floors(scfg, auc_floor: float | None) -> dict[str, float]:
    """Every floor of the study, {result key: lowest feasible value}: the constrained objective's
    AUC floor and the missing-modality ES-AUC floors."""
    out = {"auc": auc_floor} if scfg.objective == "constrained" and auc_floor is not None else {}
    return {**out, **missing_floors(scfg)}


def shortfall(value, floor: float) -> float:
    """Optuna's constraint value: floor - value (feasible when <= 0); an undefined value is
    infeasible (1.0: above any shortfall of a metric in [0, 1])."""
    v = float(value) if isinstance(value, (int, float)) else math.nan
    return floor - v if math.isfinite(v) else 1.0


class WarmOptunaSearch(OptunaSearch):
    """OptunaSearch whose study starts with an earlier study's trials (`--warm-start`,
    search/run/warm_start.py), added once when the study is created (a resumed search unpickles the
    study with them already in).

    It also takes results of a trial it never suggested. Tune saves the searcher's state and the
    experiment's trials at different moments, so a driver killed between the two resumes with a
    trial its searcher does not know; Ray's OptunaSearch then raised KeyError on that trial's first
    result and the resumed search died (seen in the multi-node SIGKILL test). Such a trial trains and
    is recorded as usual; only Optuna's sampler does not learn from it (a warning says which).

    The other way round, a trial it suggested after the experiment's trials were saved is not in
    the restored study (search.run.resume): on restore it is told to Optuna as FAIL, so the
    constant liar does not hold its point as a running trial for the rest of the search."""

    def __init__(self, *args, warm_trials=(), **kwargs):
        self.warm_trials = list(warm_trials)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        if getattr(self, "warm_trials", None):
            self._ot_study.add_trials(self.warm_trials)

    _unknown_warned: frozenset = frozenset()   # class default: a searcher pickled before it has none

    def _unknown(self, trial_id: str) -> bool:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return False
        if trial_id not in self._unknown_warned:
            self._unknown_warned = self._unknown_warned | {trial_id}
            print(f"[search] trial {trial_id} was started before the driver stopped but after the "
                  f"searcher's state was saved: it runs and is recorded, Optuna's sampler does not "
                  f"learn from it", flush=True)
        return True

    def restore_from_dir(self, checkpoint_dir: str):
        super().restore_from_dir(checkpoint_dir)
        held = snapshot_trials(checkpoint_dir)   # Tune's trials, downloaded beside the searcher's
        if held is None:
            return
        for trial_id, ot_trial in self._ot_trials.items():
            if trial_id not in held and trial_id not in self._completed_trials:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                self._completed_trials.add(trial_id)
                print(f"[search] resume: trial {trial_id} was suggested after the driver's last "
                      "snapshot and is not in the restored study: Optuna records it as failed",
                      flush=True)

    def on_trial_result(self, trial_id, result):
        if not self._unknown(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if not self._unknown(trial_id):
            super().on_trial_complete(trial_id, result=result, error=error)


class ConstrainedOptunaSearch(WarmOptunaSearch):
    """OptunaSearch that tells Optuna the floors: feasible when floor - value <= 0 for each
    ({"auc": floor} is the constrained objective's, named auc_floor as before; a missing-modality
    floor is named floor:<key>). Like OptunaSearch's value, the result is the trial's LAST report
    (early for ASHA-stopped)."""

    def __init__(self, *args, auc_floor: float | None = None, floors: dict | None = None, **kwargs):
        self.auc_floor = auc_floor
        self.floors = dict(floors) if floors is not None else {"auc": auc_floor}
        super().__init__(*args, **kwargs)

    def on_trial_complete(self, trial_id, result=None, error=False):
        # a study pickled before the floors existed holds auc_floor only
        floors = getattr(self, "floors", None) or {"auc": self.auc_floor}
        if result and not error and trial_id in self._ot_trials:
            for key, floor in floors.items():
                name = "auc_floor" if key == "auc" else f"floor:{key}"
                self._ot_trials[trial_id].set_constraint(name, shortfall(result.get(key), floor))
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(scfg, auc_floor: float | None = None) -> OptunaSearch:
    if scfg.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=scfg.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=scfg.seed, multivariate=True, constant_liar=True)
    start = [dict(scfg.baseline)]     # the paper's point is evaluated first
    warm = []
    if scfg.warm_start:
        warm = warm_start.optuna_trials(warm_start.load(scfg), scfg.mode, scfg.objective, auc_floor)
    limits = floors(scfg, auc_floor)
    kind, extra = ((ConstrainedOptunaSearch, {"floors": limits, "auc_floor": limits.get("auc")}) if limits
                   else (WarmOptunaSearch, {}))
    if scfg.objective == "pareto":
        keys = objective_keys(scfg)
        return kind(metric=keys, mode=["max"] * len(keys), sampler=sampler, points_to_evaluate=start,
                    warm_trials=warm, **extra)
    return kind(sampler=sampler, points_to_evaluate=start, warm_trials=warm, **extra)


def make_scheduler(scfg):
    if scfg.scheduler == "none":
        return FIFOScheduler()
    # time = the trainer's epoch, not Tune's report count: a trial resumed from an older checkpoint
    # (or from scratch) reports its epochs again, and its rungs stay where its epochs are
    rungs = dict(time_attr="epoch", max_t=scfg.max_epochs, grace_period=scfg.grace_period,
                 reduction_factor=scfg.reduction_factor)
    if scfg.objective in ("pareto", "constrained") and scfg.scheduler == "asha":
        keys = tuple(objective_keys(scfg)) if scfg.objective == "pareto" else ("auc", STOP_METRIC)
        return MOASHAScheduler(metrics=keys, modes=("max",) * len(keys), **rungs)
    # single objective, or `scheduler="asha_es_auc"` (benchmarks: ES-AUC-only ASHA on a pareto search);
    # pareto's TuneConfig holds no metric, so the scheduler is given it
    multi = scfg.objective == "pareto"
    return ASHAScheduler(**rungs, **(dict(metric=STOP_METRIC, mode="max") if multi else {}))


def tune_metric(scfg) -> dict:
    """TuneConfig's metric/mode: none for pareto (they would override the searcher's lists)."""
    return {} if scfg.objective == "pareto" else {"metric": STOP_METRIC, "mode": "max"}


def reference_auc(cfg, scfg=None, setup: dict | None = None) -> float:
    """Validation AUC of the study's reference (plain fusion; CLIP for a vision-language mode)
    with the search's data and epochs, for the
    constrained objective's floor: one fit before the search, as a Ray task with a trial's
    resources (search.run.remote: a GPU where trials have one; the data read on its node). It runs
    under the request the study made for the search's nodes. Without `scfg`, here."""
    if scfg is None:
        return reference_fit(cfg)

    return run(scfg, "reference fit", reference_fit, cfg, data_of(setup), reserve=False)


def reference_fit(cfg, data: dict | None = None) -> float:
    """The reference fit itself (in the task): the validation AUC only comes back."""
    # the model code loads in the task, on a trial node: the driver imports this module without it
    from trainer.loop import fit

    cfg = cfg.replace(mode=reference_of(cfg.mode).mode, evaluate_test=False)
    if data is not None:
        return float(fit(cfg, progress=False, datasets=datasets(cfg, data))["val"]["auc"])
    return float(fit(cfg, progress=False)["val"]["auc"])
