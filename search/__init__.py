"""Search service: Ray Tune + Optuna TPE + ASHA over the MultiFair trainer, tracked in MLflow.

Modules: runner (CLI; parse, prepare, search, confirm, report, top to bottom), study (the one
owner of the results folder and study metadata), space (search space), objectives (es_auc /
pareto / constrained, searcher and scheduler), trainable (one trainer fit per trial), confirm
(finalists x fresh seeds as one Tune run, the pick rule), paired (the test split once, paired
bootstrap against plain fusion), registry (champion model, scoring command), figures
(sensitivity from the trials), sweep (the paper's one-at-a-time sweeps), report (HTML), decide
(the stages after the search), tracking (MLflow on the driver), progress, summary, relog,
analysis. Every Ray, Optuna and MLflow import of the project lives in this package.
"""
