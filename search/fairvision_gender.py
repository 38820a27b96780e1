"""MultiFair hyperparameter search on FairVision (fairvision layout), attribute gender.

Runs Optuna TPE + ASHA over rho, lambda_gm, tau, delta and lambda_f on Ray Tune, starting from the
paper's hyperparameters (trainer.config.paper_settings), and logs every trial to MLflow. Needs the installed project
(`pip install -e .[search]`); works copied alone, e.g. by `ray submit cluster.yaml fairvision_gender.py -- ...`.
Without --data-root it generates a small synthetic dataset. See docs/search.md; --help for flags.
"""
from search.runner import main

if __name__ == "__main__":
    raise SystemExit(main("fairvision", "gender"))   # the paper's point: trainer.config.paper_settings
