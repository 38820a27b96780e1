#!/usr/bin/env bash
# Manual end-to-end check of `ray up` / `ray submit` / `ray down` with cluster/localhost.yaml on
# a Debian box, as root (NOT run by CI). It installs openssh-server and rsync, creates the user
# `multifair` and an SSH key authorized for it, starts sshd on 127.0.0.1 unless one already
# answers there, brings the single-host cluster up, submits a tiny search (the entry script copied
# alone; no --local, so it must attach to the cluster), checks the output, and takes the cluster
# down and stops the sshd it started, whatever happened. Exit status 0 only if every check passed.
#
#   cluster/selftest.sh                                   # fresh box: setup_commands install
#                                                         # everything into ~multifair/venv (minutes)
#   cluster/selftest.sh --reuse-site-packages /work/main/.venv/lib/python3.11/site-packages
#       # fast: ~multifair/venv (Debian's python3.11) sees that existing install through a .pth
#       # file, so setup_commands find ray, torch, ... already installed. DIR must be readable
#       # by `multifair` and built for Python 3.11.
#
# The `ray` CLI used is the project's: $RAY, default <repo>/.venv/bin/ray (must be ray 2.60.0).
# Left in place for fast re-runs: the user `multifair` with ~/venv and ~/multifair-tune, the key
# ~/.ssh/multifair_localhost_ed25519 (remove with `userdel -r multifair`), results under /tmp.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
YAML=cluster/localhost.yaml
RAY=${RAY:-$REPO/.venv/bin/ray}
SSH_USER=multifair
KEY=$HOME/.ssh/multifair_localhost_ed25519          # = auth.ssh_private_key in $YAML
SSHD_PID=/run/sshd-multifair-selftest.pid
RESULTS=/tmp/mf-cluster-results.$(date +%Y%m%d-%H%M%S)
LOG=${LOG:-/tmp/mf-cluster-selftest.$(date +%Y%m%d-%H%M%S).log}
REUSE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --reuse-site-packages) REUSE=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

say() { printf '\n[selftest] %s\n' "$*" | tee -a "$LOG" >&2; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root"
command -v apt-get > /dev/null || fail "needs a Debian-like system (apt-get)"
"$RAY" --version 2>/dev/null | grep -q 'version 2\.60\.0' || fail "$RAY is not ray 2.60.0"
cd "$REPO"
: > "$LOG"
START=$SECONDS

say "packages: openssh-server rsync python3.11-venv"
apt-get update -qq >> "$LOG" 2>&1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync python3.11 python3.11-venv \
    >> "$LOG" 2>&1

say "user $SSH_USER and key $KEY"
id "$SSH_USER" > /dev/null 2>&1 || useradd -m -s /bin/bash "$SSH_USER"
HOME_U=$(getent passwd "$SSH_USER" | cut -d: -f6)
install -d -m 700 "$HOME/.ssh"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C multifair-localhost -f "$KEY"
install -d -m 700 -o "$SSH_USER" -g "$SSH_USER" "$HOME_U/.ssh"
touch "$HOME_U/.ssh/authorized_keys"
grep -qxF "$(cat "$KEY.pub")" "$HOME_U/.ssh/authorized_keys" || cat "$KEY.pub" >> "$HOME_U/.ssh/authorized_keys"
chown "$SSH_USER:$SSH_USER" "$HOME_U/.ssh/authorized_keys"; chmod 600 "$HOME_U/.ssh/authorized_keys"

STARTED_SSHD=""
UP=""
cleanup() {
    rc=$?
    set +e
    if [ -n "$UP" ]; then
        say "ray down"
        "$RAY" down -y "$YAML" >> "$LOG" 2>&1 || { say "ray down failed"; rc=1; }
    fi
    if [ -n "$STARTED_SSHD" ] && [ -f "$SSHD_PID" ]; then
        say "stopping the sshd this script started (pid $(cat "$SSHD_PID"))"
        kill "$(cat "$SSHD_PID")"
    fi
    if [ "$rc" = 0 ]; then say "PASS in $((SECONDS - START)) s (log $LOG)"; else say "FAILED (rc $rc, log $LOG)"; fi
    exit "$rc"
}
trap cleanup EXIT

SSH=(ssh -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
     -o LogLevel=ERROR -o ConnectTimeout=10 "$SSH_USER@127.0.0.1")
if ! (exec 3<> /dev/tcp/127.0.0.1/22) 2> /dev/null; then
    say "starting sshd on 127.0.0.1:22"
    mkdir -p /run/sshd
    ls /etc/ssh/ssh_host_*_key > /dev/null 2>&1 || ssh-keygen -A
    /usr/sbin/sshd -o ListenAddress=127.0.0.1 -o PidFile="$SSHD_PID"
    STARTED_SSHD=1
    sleep 1
fi
"${SSH[@]}" true || fail "cannot ssh to $SSH_USER@127.0.0.1 with $KEY"

if [ -n "$REUSE" ]; then
    say "pre-seeding $HOME_U/venv from $REUSE"
    [ -r "$REUSE/ray/__init__.py" ] || fail "$REUSE has no ray"
    su - "$SSH_USER" -c "test -r '$REUSE/ray/__init__.py'" || fail "$REUSE is not readable by $SSH_USER"
    su - "$SSH_USER" -c 'test -x ~/venv/bin/python || python3.11 -m venv ~/venv'
    SITE=$HOME_U/venv/lib/python3.11/site-packages
    [ -d "$SITE" ] || fail "$HOME_U/venv is not a Python 3.11 venv"
    echo "$REUSE" > "$SITE/zz-reuse-site-packages.pth"    # after the venv's own packages
    if [ ! -e "$HOME_U/venv/bin/ray" ]; then                # pip sees ray installed: no script
        printf '#!%s/venv/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n' \
            "$HOME_U" > "$HOME_U/venv/bin/ray"
        chmod 755 "$HOME_U/venv/bin/ray"
    fi
    chown -R "$SSH_USER:$SSH_USER" "$HOME_U/venv"
fi

say "ray up -y $YAML"
UP=1
"$RAY" up -y --no-config-cache "$YAML" >> "$LOG" 2>&1 || fail "ray up failed"
T_UP=$((SECONDS - START))

say "ray submit $YAML search/fairvision_gender.py (storage $RESULTS)"
SUB_LOG=$LOG.submit
# the whole decision: Pareto search, 2 finalists + the paper's point + plain fusion confirmed
# with 2 seeds each (one more Tune run on the cluster), the paired test, figures, report
"$RAY" submit "$YAML" search/fairvision_gender.py -- --preset tiny --num-samples 4 --max-epochs 2 \
    --grace-period 1 --cpus-per-trial 1 --storage-path "$RESULTS" --name selftest \
    --objective pareto --finalists 2 --confirm-seeds 2 2>&1 | tee "$SUB_LOG" >> "$LOG" \
    || fail "ray submit failed"
T_SUB=$((SECONDS - START - T_UP))
grep -q 'attached to the running Ray cluster' "$SUB_LOG" || fail "the script did not attach to the cluster"
grep -q 'embedded Ray' "$SUB_LOG" && fail "the script started an embedded Ray"
grep -q 'MultiFair search finished' "$SUB_LOG" || fail "no 'MultiFair search finished' summary"
grep -qE '^trials: 4 ' "$SUB_LOG" || fail "summary does not report 4 trials"
grep -q '^confirmation (2 fresh seeds each' "$SUB_LOG" || fail "no confirmation stage in the summary"
grep -qE '^test split, once: (chosen|best candidate \(not deployed\)) - plain fusion, paired bootstrap' "$SUB_LOG" || fail "no paired test"
[ -s "$RESULTS/selftest/decision.json" ] && [ -s "$RESULTS/selftest/report.html" ] \
    || fail "no decision.json / report.html in $RESULTS/selftest"
# the confirmation runs ran side by side on the cluster: their [start, end] intervals overlap
"$REPO/.venv/bin/python" - "$RESULTS/selftest-confirm" <<'PY' 2>&1 | tee -a "$LOG" >&2 || fail "confirmation runs did not run in parallel"
import glob, json, sys
spans = []
for f in glob.glob(sys.argv[1] + "/trial_*/result.json"):
    rows = [json.loads(line) for line in open(f) if line.strip()]
    start = min(r["cost/entry_time"] for r in rows if "cost/entry_time" in r)
    spans.append((start, max(r["timestamp"] for r in rows)))   # whole seconds: a lower bound
events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
running = peak = 0
for _, step in events:
    running += step
    peak = max(peak, running)
print(f"confirmation runs: {len(spans)}, at most {peak} at once")
sys.exit(0 if len(spans) >= 6 and peak >= 2 else 1)
PY
say "seen: $(grep -o 'attached to the running Ray cluster.*' "$SUB_LOG" | cut -c1-160)"
sed -n '/=== MultiFair search finished ===/,/^trials:/p' "$SUB_LOG" | tee -a "$LOG" >&2
say "ray up + setup: ${T_UP} s; ray submit (search): ${T_SUB} s"
