"""MultiFair trainer: plain PyTorch, no Ray, no MLflow."""
