#!/usr/bin/env bash
# Do the project's pins resolve, with all their dependencies, as wheels for CPython 3.11, 3.12
# and 3.13? Resolution only (pip install --dry-run: metadata, nothing installed; torch's wheel is
# not downloaded where the index serves its metadata). Run from the repository root:
#   cluster/check_pins.sh [PIP]        # default: .venv/bin/pip
set -euo pipefail
PIP="${1:-.venv/bin/pip}"
for v in 3.11 3.12 3.13; do
  out="$(mktemp -d)"
  if "$PIP" install -q --dry-run --ignore-installed --only-binary=:all: --python-version "$v" \
       --implementation cp --target "$out/t" --report "$out/report.json" ".[search,server,dev]" >"$out/log" 2>&1; then
    n="$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['install']))" "$out/report.json")"
    echo "python $v: resolves ($n packages)"
  else
    echo "python $v: FAILS"; tail -5 "$out/log"; status=1
  fi
  rm -rf "$out"
done
exit "${status:-0}"
