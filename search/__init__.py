"""Search service: Ray Tune + Optuna TPE + ASHA over the MultiFair trainer, tracked in MLflow.

Three stages, one folder each, dependencies pointing down (docs/architecture.md):
- search.record: the study folder and its format version (study, migrate), MLflow tracking (the
  tracker; the live search's trial callback), re-log, figures and importances, the HTML report,
  the console summary, the analysis command.
- search.run: the search itself: the stage (the Tune run, new or resumed), the trainable, the
  one Tuner factory (tuning), the space, the objectives' searcher and scheduler side, MO-ASHA,
  progress, resume, embedded Ray, reaper, cluster sizing, checkpoint storage, warm start, the
  sweeps, the cluster's data preparation.
- search.decide: the stages after the search: selection (best, front, finalists), confirmation,
  the decision rule (a pure function of a results table), the paired test, the Ray tasks that
  run them (remote), the registered model (registry, mlmodel, pyfunc).
runner.py reads top to bottom (parse, prepare, search, decide, record), its settings and flags in
config.py; the entry scripts (fairvision_gender.py, ...) stay here, where users run them and
`ray submit` copies them. The side commands share one command line:
`python -m search decide|analyze|sweep|relog|score|storage|dataprep`.
Every Ray, Optuna and MLflow import of the project lives in this package; `import search` itself
imports nothing else.

A study saved before a module moved resumes through search/record/migrate.py (its pickled module
names rewritten once, study.json's "format" bumped), not through import aliases.
"""
