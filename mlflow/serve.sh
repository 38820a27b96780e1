#!/usr/bin/env bash
# Start an MLflow tracking server for searches on a cluster (several writers need a server; a
# single machine can use the sqlite default). Artifacts (model weights) are proxied through it.
#   mlflow/serve.sh [STORE_DIR] [PORT] [HOST]
# then search with --tracking-uri http://HOST:PORT (or export MLFLOW_TRACKING_URI).
set -euo pipefail
STORE="$(realpath -m "${1:-$HOME/multifair-mlflow}")"
PORT="${2:-5000}"
HOST="${3:-127.0.0.1}"     # 0.0.0.0 to serve a cluster; put it behind auth on shared networks
mkdir -p "$STORE/artifacts"
exec mlflow server \
  --backend-store-uri "sqlite:///$STORE/mlflow.db" \
  --artifacts-destination "$STORE/artifacts" \
  --host "$HOST" --port "$PORT"
