#!/usr/bin/env bash
# SMTP inbound benchmark: posthaste vs Postfix -> Dovecot LMTP, same machine, same run.
#
#   bash bench/smtp.sh [-m MESSAGES] [-s SESSIONS] [-l BYTES] [-o posthaste|baseline|both]
#
# Each system gets the same load from smtp-source (Postfix's load generator): MESSAGES
# messages of BYTES bytes from sender@remote.test to u@bench.test over SESSIONS parallel
# SMTP sessions, one message per connection (as an MX sees it), to 127.0.0.1. A message
# counts as delivered when it is a file in the recipient's Maildir (new/ or cur/); the
# clock stops when all MESSAGES are there, so queueing and local delivery are included,
# not only the SMTP dialogue. Both systems keep their default fsync behaviour (durable:
# Postfix fsyncs queue files, Dovecot fsyncs delivered mail, posthaste fsyncs per DESIGN.md).
#
# Prints messages/s for each, the ratio posthaste/baseline, and the resident memory of
# `posthaste serve` when idle after start, 1 s and 16 s after the run (VmRSS). Not a test:
# numbers depend on the machine and on whatever else runs; see docs/benchmarks.md.
#
# All smtp-source sessions come from 127.0.0.1, so posthaste's per-address connection limit
# is lifted (Postfix exempts $mynetworks from its own limits likewise). posthaste delivers
# local mail during DATA, so its "accept" and "delivered" times are nearly the same.
# Each run delivers into an empty mailbox: the rate is an average over a mailbox that grows
# from 0 to MESSAGES (bench/smtp-batches.sh shows the rate per mailbox size).
#
# POSTHASTE_BIN=path uses that binary instead of building target/release/posthaste.
set -euo pipefail

MESSAGES=5000
SESSIONS=20
SIZE=2048
ONLY=both
while getopts "m:s:l:o:h" opt; do
    case $opt in
        m) MESSAGES=$OPTARG ;;
        s) SESSIONS=$OPTARG ;;
        l) SIZE=$OPTARG ;;
        o) ONLY=$OPTARG ;;
        *) sed -n '2,26p' "$0"; exit 2 ;;
    esac
done
case $ONLY in posthaste|baseline|both) ;; *) echo "-o must be posthaste, baseline or both" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
. bench/lib.sh
REPO=$PWD

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || die "$1 not found: install the Debian package $2"; }
need smtp-source postfix
need postfix postfix
need openssl openssl
if [ "$ONLY" != posthaste ]; then
    need dovecot dovecot-lmtpd
    [ -x /usr/lib/dovecot/lmtp ] || die "Dovecot LMTP not found: install the Debian package dovecot-lmtpd"
fi
[ "$(id -u)" -eq 0 ] || die "run as root (Postfix and Dovecot need it to switch users)"
export PATH=$PATH:/usr/sbin:/sbin

WORK=$(mktemp -d /tmp/posthaste-bench-XXXXXX)
# Postfix's lmtp client and Dovecot's mail processes run unprivileged and must reach
# the sockets and Maildirs below.
chmod 755 "$WORK"
NOBODY=65534
PIDS_TO_KILL=()
POSTFIX_CONF=""
DOVECOT_CONF=""

cleanup() {
    local pid
    [ -n "$POSTFIX_CONF" ] && postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
    [ -n "$DOVECOT_CONF" ] && doveadm -c "$DOVECOT_CONF" stop >/dev/null 2>&1 || true
    for pid in "${PIDS_TO_KILL[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then
        echo "kept $WORK (KEEP set)"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # host port what logfile
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$3 did not listen on $1:$2; log:" >&2
    tail -30 "$4" >&2 || true
    exit 1
}

count_maildir() {
    local n=0 d
    for d in "$1/new" "$1/cur"; do
        [ -d "$d" ] && n=$((n + $(find "$d" -maxdepth 1 -type f | wc -l)))
    done
    echo "$n"
}

now() { date +%s.%N; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Sum of PSS (proportional set size: shared pages divided among their users) over the
# processes whose parent chain reaches one of the given PIDs. Summing VmRSS over Postfix's
# ~100 processes would count the shared libraries ~100 times.
tree_pss_kib() {
    python3 - "$@" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1:]}
parent, rss = {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        status = open(f"/proc/{d}/status").read()
    except OSError:
        continue
    fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
    parent[int(d)] = int(fields.get("PPid", "0").strip())
    try:
        rollup = open(f"/proc/{d}/smaps_rollup").read()
        rss[int(d)] = next(int(l.split()[1]) for l in rollup.splitlines() if l.startswith("Pss:"))
    except (OSError, StopIteration):
        rss[int(d)] = 0
total = 0
for pid in parent:
    p, seen = pid, 0
    while p and seen < 64:
        if p in roots:
            total += rss[pid]
            break
        p, seen = parent.get(p, 0), seen + 1
print(total)
PY
}

# run_load NAME PORT MAILDIR LOG -> sets ACCEPT_S, TOTAL_S
run_load() {
    local name=$1 port=$2 maildir=$3 log=$4 start accepted end n deadline
    echo "-- $name: $MESSAGES messages x ${SIZE} B, $SESSIONS sessions"
    start=$(now)
    smtp-source -m "$MESSAGES" -s "$SESSIONS" -l "$SIZE" -f sender@remote.test -t u@bench.test \
        -M bench.test "127.0.0.1:$port" || die "smtp-source failed against $name (log: $log)"
    accepted=$(now)
    deadline=$(( $(date +%s) + 600 ))
    while :; do
        n=$(count_maildir "$maildir")
        [ "$n" -ge "$MESSAGES" ] && break
        if [ "$(date +%s)" -gt "$deadline" ]; then
            tail -20 "$log" >&2
            die "$name delivered only $n of $MESSAGES messages within 10 minutes"
        fi
        sleep 0.05
    done
    end=$(now)
    [ "$n" -eq "$MESSAGES" ] || die "$name: $n files in $maildir, expected exactly $MESSAGES"
    ACCEPT_S=$(calc "$accepted - $start")
    TOTAL_S=$(calc "$end - $start")
    printf '   accepted in %.2f s, all %d in the Maildir after %.2f s (load average now %s)\n' \
        "$ACCEPT_S" "$n" "$TOTAL_S" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# Arithmetic on decimals with awk (bc is not in a minimal Debian).
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
rate() { awk "BEGIN { printf \"%.1f\", $MESSAGES / $1 }"; }

echo "posthaste SMTP benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) CPUs  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "work dir $WORK"

# ----------------------------------------------------------------------------------------
# posthaste
# ----------------------------------------------------------------------------------------
bench_posthaste() {
    local bin=${POSTHASTE_BIN:-} dir=$WORK/posthaste port conf pid
    if [ -z "$bin" ]; then
        command -v cargo >/dev/null || { [ -r "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
        command -v cargo >/dev/null || die "cargo not found (install Rust, see README)"
        echo "-- building posthaste (release)"
        cargo build --release --locked --quiet
        bin=$REPO/target/release/posthaste
    fi
    mkdir -p "$dir/data"
    port=$(free_port)
    conf=$dir/posthaste.toml
    cat > "$conf" <<TOML
hostname = "mail.bench.test"
data_dir = "$dir/data"

[listen]
smtp = ["127.0.0.1:$port"]

[log]
format = "json"
level = "info"

[smtp]
# Every smtp-source session comes from 127.0.0.1; an MX sees many addresses. Postfix
# exempts \$mynetworks from its per-client limits (smtpd_client_event_limit_exceptions),
# so lift posthaste's per-address limit (default 20) the same way.
max_connections_per_ip = 100000

[server]
user = "root"
TOML
    "$bin" --config "$conf" domain add bench.test >/dev/null
    echo "benchpass" | "$bin" --config "$conf" user add u@bench.test --password-stdin >/dev/null
    setsid "$bin" --config "$conf" serve >"$dir/serve.log" 2>&1 </dev/null &
    pid=$!
    PIDS_TO_KILL+=("$pid")
    wait_port 127.0.0.1 "$port" "posthaste serve" "$dir/serve.log"
    sleep 1
    PH_RSS_IDLE=$(rss_kib "$pid")
    echo "   posthaste serve pid $pid, idle VmRSS ${PH_RSS_IDLE} KiB"
    run_load posthaste "$port" "$dir/data/mail/bench.test/u" "$dir/serve.log"
    PH_ACCEPT=$ACCEPT_S PH_TOTAL=$TOTAL_S
    sleep 1
    PH_RSS_AFTER=$(rss_kib "$pid")
    echo "   VmRSS after the run ${PH_RSS_AFTER} KiB"
    # tokio ends idle blocking-pool threads after 10 s; memory they leave behind stays.
    sleep 15
    PH_RSS_SETTLED=$(rss_kib "$pid")
    echo "   VmRSS 16 s after the run ${PH_RSS_SETTLED} KiB"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ----------------------------------------------------------------------------------------
# Baseline: Postfix (private instance) -> LMTP -> Dovecot (private instance) -> Maildir
# ----------------------------------------------------------------------------------------
bench_baseline() {
    local dir=$WORK/baseline port d
    port=$(free_port)
    d=$dir/dovecot
    mkdir -p "$d/mail" "$d/state"
    chown "$NOBODY:$NOBODY" "$d/mail"
    cat > "$d/users" <<USERS
u@bench.test:{PLAIN}benchpass:$NOBODY:$NOBODY::$d/mail/bench.test/u
USERS
    cat > "$d/dovecot.conf" <<CONF
# Only LMTP, only this directory: the system Dovecot (if any) is untouched.
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
protocols = lmtp
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:$d/mail/%d/%n
passdb {
  driver = passwd-file
  args = $d/users
}
userdb {
  driver = passwd-file
  args = $d/users
}
service lmtp {
  unix_listener lmtp {
    mode = 0666
  }
}
CONF
    DOVECOT_CONF=$d/dovecot.conf
    dovecot -c "$DOVECOT_CONF" || die "dovecot did not start: $(tail -5 "$d/dovecot.log" 2>/dev/null)"
    for _ in $(seq 100); do [ -S "$d/run/lmtp" ] && break; sleep 0.05; done
    [ -S "$d/run/lmtp" ] || die "no Dovecot LMTP socket at $d/run/lmtp; log: $(tail -5 "$d/dovecot.log")"

    local p=$dir/postfix
    mkdir -p "$p/conf" "$p/queue" "$p/data"
    chown postfix "$p/data"
    cat > "$p/conf/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $p/queue
data_directory = $p/data
maillog_file = $p/maillog
maillog_file_prefixes = $p
myhostname = mx.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
default_transport = error:benchmark instance
virtual_mailbox_domains = bench.test
virtual_mailbox_maps = inline:{ u@bench.test=ok }
virtual_transport = lmtp:unix:$d/run/lmtp
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
CONF
    postfix_master_cf "$p/conf/master.cf" "$port"
    POSTFIX_CONF=$p/conf
    postfix -c "$POSTFIX_CONF" start >/dev/null 2>&1 ||
        die "postfix did not start: $(script -qec "postfix -c $POSTFIX_CONF check" /dev/null; tail -5 "$p/maillog" 2>/dev/null)"
    wait_port 127.0.0.1 "$port" "Postfix" "$p/maillog"
    sleep 1
    local roots
    roots="$(cat "$p/queue/pid/master.pid" | tr -d ' ') $(cat "$d/run/master.pid")"
    # shellcheck disable=SC2086
    BL_RSS_IDLE=$(tree_pss_kib $roots)
    echo "   Postfix+Dovecot idle memory: PSS of all their processes ${BL_RSS_IDLE} KiB"
    run_load "Postfix+Dovecot" "$port" "$d/mail/bench.test/u" "$p/maillog"
    BL_ACCEPT=$ACCEPT_S BL_TOTAL=$TOTAL_S
    # shellcheck disable=SC2086
    BL_RSS_AFTER=$(tree_pss_kib $roots)
    echo "   PSS of all their processes after the run ${BL_RSS_AFTER} KiB"
    postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
    doveadm -c "$DOVECOT_CONF" stop >/dev/null 2>&1 || true
    POSTFIX_CONF="" DOVECOT_CONF=""
}

PH_TOTAL="" BL_TOTAL=""
[ "$ONLY" = baseline ] || bench_posthaste
[ "$ONLY" = posthaste ] || bench_baseline

echo
echo "== results: $MESSAGES messages of $SIZE bytes, $SESSIONS parallel sessions, durable delivery to Maildir"
# Memory: VmRSS of the one posthaste process; for the baseline the PSS sum of all its
# processes (comparable: for a single process PSS <= RSS, so this does not flatter posthaste).
printf '%-18s %14s %16s %14s %14s\n' system "accept msg/s" "delivered msg/s" "idle mem KiB" "mem after KiB"
if [ -n "$PH_TOTAL" ]; then
    printf '%-18s %14s %16s %14s %14s\n' posthaste "$(rate "$PH_ACCEPT")" "$(rate "$PH_TOTAL")" "$PH_RSS_IDLE" "$PH_RSS_AFTER"
    printf '%-18s %14s %16s %14s %14s\n' "" "" "" "" "($PH_RSS_SETTLED at +16 s)"
fi
if [ -n "$BL_TOTAL" ]; then
    printf '%-18s %14s %16s %14s %14s\n' "Postfix+Dovecot" "$(rate "$BL_ACCEPT")" "$(rate "$BL_TOTAL")" "$BL_RSS_IDLE" "$BL_RSS_AFTER"
fi
if [ -n "$PH_TOTAL" ] && [ -n "$BL_TOTAL" ]; then
    printf 'ratio posthaste/baseline (delivered msg/s): %.2f\n' "$(calc "$BL_TOTAL / $PH_TOTAL")"
fi
