"""MultiFair hyperparameter search on FairVision (fairvision layout), attribute gender.

Runs Optuna TPE + ASHA over rho, lambda_gm, tau, delta and lambda_f on Ray Tune, starting from the
paper's hyperparameters, and logs every trial to MLflow. Needs the installed project
(`pip install -e .[search]`); works copied alone, e.g. by `ray submit cluster.yaml fairvision_gender.py -- ...`.
Without --data-root it generates a small synthetic dataset. See docs/search.md; --help for flags.
"""
from search.runner import main

PAPER = dict(rho=1.2, lambda_gm=0.15, tau=0.04, delta=0.3, lambda_f=0.5)

if __name__ == "__main__":
    raise SystemExit(main("fairvision", "gender", baseline=PAPER))
