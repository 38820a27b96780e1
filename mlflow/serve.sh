#!/usr/bin/env bash
# The MLflow tracking server for searches on a cluster (several writers need a server; one
# machine can use the embedded sqlite default). Basic-auth is ON unless it serves loopback only
# and MLFLOW_NO_AUTH=1. Model weights (artifacts) are proxied through the server, so clients
# need no S3 credentials. See mlflow/README.md.
#   mlflow/serve.sh [STORE_DIR] [PORT] [HOST]
# Settings (environment; positional arguments win over MLFLOW_STORE / MLFLOW_PORT / MLFLOW_HOST):
#   MLFLOW_BACKEND_STORE_URI        runs database; default sqlite:///STORE_DIR/mlflow.db.
#                                   A team server: postgresql+psycopg2://user:pw@host:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION    default STORE_DIR/artifacts; or s3://bucket/prefix (then the
#                                   server needs AWS_* credentials and, off AWS, MLFLOW_S3_ENDPOINT_URL)
#   MLFLOW_AUTH_ADMIN_PASSWORD      admin password (>= 12 characters), or
#   MLFLOW_AUTH_ADMIN_PASSWORD_FILE a file holding it. Used only while the user table is empty.
#   MLFLOW_AUTH_ADMIN_USERNAME      default admin
#   MLFLOW_AUTH_DATABASE_URI        users and permissions; default sqlite:///STORE_DIR/basic_auth.db
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what users get on experiments they did not create: READ
#                                   (default), EDIT, MANAGE or NO_PERMISSIONS
#   MLFLOW_FLASK_SERVER_SECRET_KEY  session secret; default: generated once into STORE_DIR
#   MLFLOW_WORKERS (default 2), MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default false: no job workers)
set -euo pipefail
STORE="$(realpath -m "${1:-${MLFLOW_STORE:-$HOME/multifair-mlflow}}")"
PORT="${2:-${MLFLOW_PORT:-5000}}"
HOST="${3:-${MLFLOW_HOST:-127.0.0.1}}"
die() { echo "mlflow/serve.sh: $*" >&2; exit 2; }
mkdir -p "$STORE"
chmod 700 "$STORE"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STORE/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$STORE/artifacts}"
[[ "$ARTIFACTS" == *://* ]] || mkdir -p "$ARTIFACTS"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

auth_args=()
case "$HOST" in 127.*|localhost|::1) loopback=1 ;; *) loopback=0 ;; esac
if [[ "${MLFLOW_NO_AUTH:-0}" == 1 ]]; then
  [[ $loopback == 1 ]] || die "MLFLOW_NO_AUTH=1 is refused with --host $HOST: anyone on that network could read and delete every run"
else
  if [[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-}" ]]; then
    [[ -r "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE" ]] || die "MLFLOW_AUTH_ADMIN_PASSWORD_FILE=$MLFLOW_AUTH_ADMIN_PASSWORD_FILE is not readable"
    MLFLOW_AUTH_ADMIN_PASSWORD="$(head -n1 "$MLFLOW_AUTH_ADMIN_PASSWORD_FILE")"
  fi
  AUTH_DB="${MLFLOW_AUTH_DATABASE_URI:-sqlite:///$STORE/basic_auth.db}"
  # Required at every start (MLflow reads it only while the user table is empty): one clear
  # line instead of MLflow's traceback, and never a default.
  pw="${MLFLOW_AUTH_ADMIN_PASSWORD:-}"
  [[ ${#pw} -ge 12 ]] || die "set MLFLOW_AUTH_ADMIN_PASSWORD (or MLFLOW_AUTH_ADMIN_PASSWORD_FILE) to an admin password of at least 12 characters; there is no default"
  export MLFLOW_AUTH_ADMIN_PASSWORD="$pw"
  if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
    [[ -s "$STORE/flask-secret" ]] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STORE/flask-secret")
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$STORE/flask-secret")"
  fi
  export MLFLOW_FLASK_SERVER_SECRET_KEY
  (umask 077; cat > "$STORE/basic_auth.ini" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $AUTH_DB
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# each request otherwise re-hashes the password (about 400 ms here; cached: about 50 ms)
auth_cache_ttl_seconds = 60
EOF
  )
  export MLFLOW_AUTH_CONFIG_PATH="$STORE/basic_auth.ini"
  auth_args=(--app-name basic-auth)
fi
exec mlflow server \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  --workers "${MLFLOW_WORKERS:-2}" \
  --host "$HOST" --port "$PORT" "${auth_args[@]}"
