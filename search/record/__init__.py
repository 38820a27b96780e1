"""What a study leaves: the study folder (paths, trial ids, METRIC, its trials: study), MLflow
tracking and re-log, figures and importances, the HTML report, the console summary, the analysis
CLI."""
