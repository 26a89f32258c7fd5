#!/usr/bin/env bash
# Profiling companion of bench/smtp.sh (posthaste only): the same smtp-source load sent in
# consecutive batches into ONE mailbox, to see how the delivery rate and the CPU cost per
# message change as the mailbox grows.
#
#   bash bench/smtp-batches.sh [-b BATCHES] [-m MESSAGES_PER_BATCH] [-s SESSIONS] [-l BYTES]
#
# Per batch it prints: messages already in the mailbox, wall time, delivered msg/s, CPU of
# `posthaste serve` per message (user+system, from /proc/PID/stat), size of the folder's
# posthaste-uidlist, VmRSS, thread count and the load average (the machine is shared).
#
# STRACE=1 also runs `strace -c -f` on the server during the last batch and prints the
# syscall counts per message. PERF=1 records `perf record --call-graph dwarf` during the
# last batch (perf.data in the work dir; KEEP=1 to keep it).
# POSTHASTE_BIN=path uses that binary instead of building target/release/posthaste.
set -euo pipefail

BATCHES=5
MESSAGES=1000
SESSIONS=20
SIZE=2048
while getopts "b:m:s:l:h" opt; do
    case $opt in
        b) BATCHES=$OPTARG ;;
        m) MESSAGES=$OPTARG ;;
        s) SESSIONS=$OPTARG ;;
        l) SIZE=$OPTARG ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=$PATH:/usr/sbin:/sbin
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
command -v smtp-source >/dev/null || die "smtp-source not found: install the Debian package postfix"
[ "$(id -u)" -eq 0 ] || die "run as root"

bin=${POSTHASTE_BIN:-}
if [ -z "$bin" ]; then
    command -v cargo >/dev/null || { [ -r "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
    cargo build --release --locked --quiet
    bin=$REPO/target/release/posthaste
fi

WORK=$(mktemp -d /tmp/posthaste-batches-XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK (KEEP set)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/posthaste.toml" <<TOML
hostname = "mail.bench.test"
data_dir = "$WORK/data"

[listen]
smtp = ["127.0.0.1:$port"]

[log]
format = "json"
level = "info"

[smtp]
max_connections_per_ip = 100000

[server]
user = "root"
TOML
mkdir -p "$WORK/data"
"$bin" --config "$WORK/posthaste.toml" domain add bench.test >/dev/null
echo benchpass | "$bin" --config "$WORK/posthaste.toml" user add u@bench.test --password-stdin >/dev/null
setsid "$bin" --config "$WORK/posthaste.toml" serve >"$WORK/serve.log" 2>&1 </dev/null &
PID=$!
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
sleep 1
MAILDIR=$WORK/data/mail/bench.test/u

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
count() { find "$MAILDIR/new" "$MAILDIR/cur" -maxdepth 1 -type f 2>/dev/null | wc -l; }
HZ=$(getconf CLK_TCK)

echo "posthaste delivery batches  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) CPUs  $BATCHES x $MESSAGES messages x $SIZE B, $SESSIONS sessions"
echo "idle VmRSS $(awk '/^VmRSS:/ {print $2}' /proc/$PID/status) KiB"
printf '%7s %8s %9s %12s %12s %10s %8s %s\n' before "wall s" "msg/s" "CPU ms/msg" "uidlist KiB" "RSS KiB" threads "load avg"
for b in $(seq "$BATCHES"); do
    before=$(count)
    tracer=""
    if [ "$b" = "$BATCHES" ] && [ -n "${STRACE:-}" ]; then
        strace -c -f -o "$WORK/strace.txt" -p "$PID" 2>/dev/null & tracer=$!
        sleep 1
    elif [ "$b" = "$BATCHES" ] && [ -n "${PERF:-}" ]; then
        perf record -F 499 --call-graph dwarf,16384 -e cpu-clock -p "$PID" -o "$WORK/perf.data" >/dev/null 2>&1 & tracer=$!
        sleep 1
    fi
    c0=$(cpu_ticks)
    t0=$(date +%s.%N)
    smtp-source -m "$MESSAGES" -s "$SESSIONS" -l "$SIZE" -f sender@remote.test -t u@bench.test \
        -M bench.test "127.0.0.1:$port" || die "smtp-source failed (log: $WORK/serve.log)"
    while [ "$(count)" -lt $((before + MESSAGES)) ]; do sleep 0.05; done
    t1=$(date +%s.%N)
    c1=$(cpu_ticks)
    if [ -n "$tracer" ]; then kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true; fi
    awk -v b="$before" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v hz="$HZ" -v m="$MESSAGES" \
        -v ix="$(( $(stat -c %s "$MAILDIR/posthaste-uidlist") / 1024 ))" \
        -v rss="$(awk '/^VmRSS:/ {print $2}' /proc/$PID/status)" \
        -v thr="$(awk '/^Threads:/ {print $2}' /proc/$PID/status)" -v la="$(cut -d' ' -f1-3 /proc/loadavg)" \
        'BEGIN { w = t1 - t0; printf "%7d %8.2f %9.1f %12.2f %12d %10d %8d %s\n", b, w, m / w, c / hz * 1000 / m, ix, rss, thr, la }'
done
sleep 12
echo "VmRSS 12 s after the last batch: $(awk '/^VmRSS:/ {print $2}' /proc/$PID/status) KiB, threads $(awk '/^Threads:/ {print $2}' /proc/$PID/status)"
if [ -n "${STRACE:-}" ]; then
    echo "== syscalls per message during the last batch (strace -c -f; strace slows the server)"
    awk -v m="$MESSAGES" '$1 ~ /^[0-9.]+$/ && NF >= 5 { calls = $4; name = $NF; printf "%-16s %8.2f per msg  %8s us/call  %6s%% of syscall time\n", name, calls / m, $3, $1 }' \
        "$WORK/strace.txt" | head -25
fi
[ -n "${PERF:-}" ] && echo "perf data: $WORK/perf.data (perf report -i ... --children --sort symbol)"
exit 0
