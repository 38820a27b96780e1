"""Search service: Ray Tune + Optuna TPE + ASHA over the MultiFair trainer, tracked in MLflow.

Modules: runner (CLI and the Tuner), space (search space), trainable (one trainer fit per
trial), tracking (MLflow on the driver), progress (compact progress lines), relog (results
folder -> MLflow), analysis (sensitivity and deployment pick). Every Ray, Optuna and MLflow
import of the project lives in this package.
"""
