"""A search's settings: `SearchConfig`, each field's default and help written once, here, and the
command line generated from the fields (`parser`, `parse_args`): the flag is the field's name
with dashes (`num_samples` -> `--num-samples`), the type its annotation's, a bool a switch
(`--local`; `--no-figures` for one that defaults to True), a list a repeatable flag, a tuple a
flag of that many values; a field with `flag=None` is set only in code (tests, benchmarks, the
sweeps). The search itself (prepare, search, decide, record) is search/runner.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path

from search.record.space import baseline_point, hyperparameters, typed
from search.record.study import stage_path
from search.run.objectives import OBJECTIVES, PARETO, BadObjective, missing_floors, objective_keys
from trainer.methods import available_methods

SCHEDULERS = ("asha", "asha_es_auc", "none")


def setting(default=MISSING, help: str = "", *, factory=MISSING, flag: str | None = "", metavar=None,
            choices=None):
    """A SearchConfig field: its default (or `factory`), its help, and how the command line reads it
    (`flag`: "" the name with dashes, None no flag, else that flag; `choices`: a tuple, or a
    function returning one, called when the parser is built)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": choices}
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class SearchConfig:
    dataset: str = setting(help="dataset layout: fairvision or fairvlmed (the entry script's)", flag=None)
    attribute: str = setting(help="protected attribute (the entry script's)", flag=None)
    baseline: dict[str, float] = setting(factory=dict, flag=None,
                                         help="the method's starting point ({}: the paper's values)")
    mode: str = setting("full", "training method (docs/methods.md); each has its own searched hyperparameters",
                        choices=available_methods)
    preset: str = setting("paper", "trainer preset: the paper's model sizes, or tiny ones (tests, demos)",
                          choices=("paper", "tiny"))
    data_root: str = setting("", "dataset root, a folder or s3://bucket/prefix?options (absent: generate a "
                             "small synthetic one)")
    prepare_on_cluster: bool = setting(False, "prepare a local --data-root with a Ray job over the whole "
                                       "cluster (every node must see the path); s3:// roots always are "
                                       "(search/run/dataprep.py)")
    synthetic_sizes: tuple[int, int, int] = setting((192, 96, 96), "train/val/test samples of the generated "
                                                    "dataset (no --data-root)", flag=None)
    sets: list[str] = setting(factory=list, help="trainer config override (repeatable)", flag="--set",
                              metavar="KEY=VALUE")
    num_samples: int = setting(16, "number of trials")
    max_epochs: int = setting(10, "epochs of a trial that ASHA never stops")
    grace_period: int = setting(2, "ASHA: first rung (epochs); epoch-1 validation ES-AUC is mostly noise "
                                "(docs/search.md)")
    reduction_factor: int = setting(3, "ASHA: one trial in this many goes on at each rung")
    max_concurrent: int = setting(0, "0: as many as the cluster holds at its largest (an autoscaler's maximum "
                                  "size, else the nodes present; docs/scaling.md)")
    cpus_per_trial: float = setting(1.0, "CPUs each trial holds")
    gpus_per_trial: float = setting(0.0, "GPUs each trial holds; fractions allowed")
    max_failures: int = setting(2, "retries per trial")
    checkpoint_every: int = setting(5, "write the exact-resume state (weights + optimiser, ~2 GiB at the paper "
                                    "preset) every K epochs; a failed or resumed trial repeats at most K-1 "
                                    "epochs. The best model (weights only, bf16) is kept at ASHA's rungs and "
                                    "the last epoch. 0: never (a lost trial starts over)", metavar="K")
    tracking_uri: str = setting("", "default: $MLFLOW_TRACKING_URI or sqlite under --storage-path")
    no_tracking: bool = setting(False, "skip MLflow; fill it later with python -m search relog")
    experiment: str = setting("", "MLflow experiment name (default multifair-<dataset>-<attribute>)")
    storage_path: str = setting("multifair-results", "results folder or s3://bucket/path")
    name: str = setting("", "study name, the folder under --storage-path (default <dataset>-<attribute>-<mode>)")
    resume: bool = setting(False, "continue an interrupted study of the same --name")
    seed: int = setting(0, "seed of the searcher, the generated data and the trials")
    local: bool = setting(False, "embedded Ray even where a cluster runs")
    num_cpus: int = setting(0, "with --local (0: all of this machine's)")
    num_gpus: int = setting(-1, "with --local (-1: detect)")
    searcher: str = setting("tpe", "tpe | random (benchmarks)", flag=None)
    scheduler: str = setting("asha", "early stopping: asha (ES-AUC ASHA, or MO-ASHA over AUC and ES-AUC for "
                             "pareto and constrained), asha_es_auc (ES-AUC ASHA for every objective), none "
                             "(every trial trains every epoch); what each keeps: docs/search-quality.md",
                             choices=SCHEDULERS)
    log_best_model: bool = setting(True, "log the chosen trial's model to MLflow", flag=None)
    final_test: bool = setting(True, "score the chosen trial on the test split at the end, once "
                               "(--no-final-test: do not)")
    objective: str = setting("es_auc", "es_auc: max validation ES-AUC; pareto: front over (AUC, ES-AUC); "
                             "constrained: max ES-AUC with AUC >= the reference's (plain fusion; CLIP "
                             "for VL modes) - --min-auc-drop (search/run/objectives.py)",
                             choices=OBJECTIVES)
    min_auc_drop: float | None = setting(None, "AUC floor below the reference (plain fusion, or CLIP; "
                                         "constrained; also applied when choosing among the confirmed "
                                         "finalists)")
    objectives: str = setting("", "what --objective pareto trades off (default auc,es_auc): auc, es_auc, and "
                              "per modality auc_missing_<m> / es_auc_missing_<m> (validation with m removed "
                              "from every sample), e.g. es_auc,es_auc_missing_oct", metavar="A,B[,C]")
    min_missing_es_auc: str = setting("", "floor on the validation ES-AUC with modality M removed: trials "
                                      "below are infeasible (any --objective), e.g. oct=0.6",
                                      metavar="M=X[,M2=Y]")
    shift_root: str = setting("", "another site's data root in the same layout: the final test also scores "
                              "the deployed model on its test split (docs/search.md)", metavar="DIR")
    finalists: int = setting(3, "configurations re-trained with fresh seeds, plus the paper's point and the "
                             "reference (0: skip; the best search trial is tested)")
    confirm_seeds: int = setting(3, "seeds per finalist (>= 2)")
    confirm_budget: int = setting(0, "up to this many more seeds for candidates still undecided after the "
                                  "first --confirm-seeds (0: none)")
    confirm_folds: int = setting(0, "each confirmation repeat also re-splits train+val: K group-stratified "
                                 "folds, repeat r validates on fold r mod K (test split untouched; 0: seeds "
                                 "only)", metavar="K")
    alpha: float = setting(0.05, "familywise error of the deployment decision (search/decide/rule.py)")
    min_gain: float = setting(0.0, "validation ES-AUC gain over the reference (plain fusion, or CLIP) a "
                              "candidate must be shown to exceed")
    register_name: str = setting("", "registered model name (default multifair-<dataset>-<attribute>)")
    figures: bool = setting(True, "the sensitivity figures (--no-figures: skip them)")
    warm_start: str = setting("", "seed the sampler with an earlier study's trials (same --mode and kind of "
                              "--objective; another attribute or site is fine): its folder or its MLflow "
                              "experiment name (search/run/warm_start.py)", metavar="STUDY_OR_EXPERIMENT")
    verbose: int = setting(1, "Tune's verbosity", flag=None)
    test_hooks: dict = setting(factory=dict, help="see docs/search.md", flag=None)

    def __post_init__(self):
        # The entry scripts pass the paper's point, MultiFair's five; a method that searches
        # other hyperparameters (--mode ogm_ge: ogm_alpha) starts from its own default instead.
        names = hyperparameters(self.mode)
        if self.baseline and set(names) <= set(self.baseline):
            self.baseline = typed({k: self.baseline[k] for k in names})   # integer knobs stay ints
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
        return stage_path(self.storage_path, self.name)


class BadFlag(ValueError):
    """A search flag that cannot work: one line naming the flag and the fix."""


def check(scfg: SearchConfig) -> None:
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
    need(scfg.scheduler in SCHEDULERS, f"scheduler {scfg.scheduler!r}: choose asha, asha_es_auc or none")
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
def flag_of(f: dataclasses.Field) -> str | None:
    """A field's flag: its own, else its name with dashes (`--no-<name>` for a bool that is on
    by default); None: not on the command line."""
    if f.metadata.get("flag") is None:
        return None
    if f.metadata["flag"]:
        return f.metadata["flag"]
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


class _Tuple(argparse.Action):
    """A flag of several values, kept as the tuple the field holds."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(values))


def _argument(f: dataclasses.Field, kind) -> dict:
    """add_argument's keywords for a field of annotation `kind`."""
    meta = f.metadata
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    out = {"dest": f.name, "default": default, "help": meta["help"]}
    if meta["metavar"]:
        out["metavar"] = meta["metavar"]
    if meta["choices"]:
        out["choices"] = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    if isinstance(kind, types.UnionType):   # `float | None`: the value's type
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return {**out, "action": "store_false" if default else "store_true"}
    if origin is list:
        out["action"], kind = "append", args[0]
    elif origin is tuple:
        out["action"], out["nargs"], kind = _Tuple, len(args), args[0]
    if kind is not str:   # argparse reads strings
        out["type"] = kind
    return out


def parser(dataset: str, attribute: str) -> argparse.ArgumentParser:
    """The search's command line, one flag per SearchConfig field that has one."""
    p = argparse.ArgumentParser(description=f"MultiFair hyperparameter search: {dataset} / {attribute}")
    kinds = typing.get_type_hints(SearchConfig)
    for f in dataclasses.fields(SearchConfig):
        flag = flag_of(f)
        if flag is not None:
            p.add_argument(flag, **_argument(f, kinds[f.name]))
    return p


def parse_args(dataset: str, attribute: str, baseline: dict | None, argv=None) -> SearchConfig:
    a = vars(parser(dataset, attribute).parse_args(argv))
    return SearchConfig(dataset=dataset, attribute=attribute, baseline=dict(baseline or {}), **a)
