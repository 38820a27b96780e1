"""Search service: Ray Tune + Optuna TPE + ASHA over the MultiFair trainer, tracked in MLflow.

Three stages, one folder each (docs/architecture.md has the table of who owns what):
- search.run: the search itself: the stage (the Tune run, new or resumed), the trainable, the
  one Tuner factory (tuning), the space, the objectives' searcher and scheduler side, MO-ASHA,
  progress, resume, embedded Ray, reaper, cluster sizing, checkpoint storage, warm start, the
  sweeps, the cluster's data preparation.
- search.decide: the stages after the search: selection (best, front, finalists), confirmation,
  the decision rule (a pure function of a results table: `python -m search.decide --table`), the
  paired test, the Ray tasks that run them (remote), the registered model (registry, mlmodel).
- search.record: the study folder (paths, trial ids, METRIC, reading trials), MLflow tracking,
  re-log, figures and importances, the HTML report, the console summary, the analysis CLI.
runner.py reads top to bottom (parse, prepare, search, decide, record); the entry scripts
(fairvision_gender.py, ...) stay here, where users run them. Every Ray, Optuna and MLflow import
of the project lives in this package.

Before this layout the modules sat in search/ itself, and Tune pickled them by those names
(the trainable, callbacks, searcher, scheduler in a study's tuner.pkl and experiment state;
the registered model's loader path in MLflow). OLD_NAMES maps each old module name to its new
one, so saved studies resume, old registered models load and the CLIs users already type
(`python -m search.relog`, `search.analysis`, `search.sweep`, ...) keep working. The alias is
resolved on first import of the old name only: `import search` imports nothing else (no Ray).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_STAGES = {
    "run": ("trainable", "tuning", "space", "objectives", "progress", "resume", "embedded_ray",
            "reaper", "mo_asha", "warm_start", "cluster_size", "storage", "sweep", "dataprep"),
    "decide": ("confirm", "paired", "registry", "mlmodel", "remote"),
    "record": ("study", "tracking", "relog", "figures", "report", "summary", "analysis"),
}
OLD_NAMES = {f"search.{m}": f"search.{stage}.{m}" for stage, mods in _STAGES.items() for m in mods}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`search.<old>` is the module object of `search.<stage>.<old>` (the same classes and
    functions, so unpickling finds them); `python -m search.<old>` runs the new module's code."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in OLD_NAMES:
            return None
        real = importlib.util.find_spec(OLD_NAMES[fullname])   # imports search.<stage> only
        return importlib.util.spec_from_file_location(fullname, real.origin, loader=self)

    def create_module(self, spec):
        module = importlib.import_module(OLD_NAMES[spec.name])
        spec.loader_state = module.__spec__   # the import system stamps the alias spec on it next
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state   # the module keeps its own name and spec

    def get_code(self, fullname):   # runpy (python -m) asks for the code to run as __main__
        new = OLD_NAMES[fullname]
        return importlib.util.find_spec(new).loader.get_code(new)


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.insert(0, _Alias())   # before any finder that could still see an old file
