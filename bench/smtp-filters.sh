#!/usr/bin/env bash
# Spam/virus filter overhead: posthaste with rspamd + clamd in the SMTP path vs Postfix with
# rspamd's proxy worker as a milter + clamav-milter; same machine, same rspamd and clamd
# instances, same run.
#
#   bash bench/smtp-filters.sh [-m MESSAGES] [-s SESSIONS] [-l BYTES]
#
# Four runs, each MESSAGES messages of BYTES bytes from sender@remote.test to u@bench.test
# over SESSIONS parallel SMTP sessions (smtp-source, one message per connection), each into
# an empty Maildir; the clock stops when every message is a file in the Maildir:
#   1. posthaste, no filters          2. posthaste, [antispam] + [antivirus]
#   3. Postfix -> virtual(8) Maildir  4. the same Postfix with smtpd_milters = rspamd proxy
#                                        (milter mode) + clamav-milter
# Prints msg/s of each, the per-message overhead of the filters ((1/rate_filtered -
# 1/rate_plain), in ms of wall time per message at that concurrency) and the ratio
# posthaste/Postfix with filters. Both scan every message with the same rspamd and clamd,
# so the difference is in how each MTA talks to them. Not a test: numbers depend on the
# machine and on whatever else runs; see docs/benchmarks.md.
#
# rspamd runs offline (every DNS/network module off, as in tests/it/support/rspamd.rs) with a
# one-signature clamd database (EICAR): the scanning work is rspamd's local rules and a
# clamd stream scan, the same for both MTAs.
#
# POSTHASTE_BIN=path uses that binary instead of building target/release/posthaste.
set -euo pipefail

MESSAGES=500
SESSIONS=10
SIZE=4096
while getopts "m:s:l:h" opt; do
    case $opt in
        m) MESSAGES=$OPTARG ;;
        s) SESSIONS=$OPTARG ;;
        l) SIZE=$OPTARG ;;
        *) sed -n '2,24p' "$0"; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
. bench/lib.sh
REPO=$PWD
export PATH=$PATH:/usr/sbin:/sbin

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found: install the Debian package $2"; }
need smtp-source postfix
need postfix postfix
need rspamd rspamd
need redis-server redis-server
need clamd clamav-daemon
need clamav-milter clamav-milter
need curl curl
[ "$(id -u)" -eq 0 ] || die "run as root (rspamd runs as _rspamd, Postfix switches users)"

WORK=$(mktemp -d /tmp/posthaste-bench-filters-XXXXXX)
chmod 755 "$WORK"
PIDS_TO_KILL=()
POSTFIX_CONF=""
cleanup() {
    local pid
    [ -n "$POSTFIX_CONF" ] && postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
    for pid in "${PIDS_TO_KILL[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK (KEEP set)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # host port what logfile [tries]
    for _ in $(seq "${5:-300}"); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$3 did not listen on $1:$2; log:" >&2; tail -30 "$4" >&2 || true; exit 1
}
count_maildir() {
    local n=0 d
    for d in "$1/new" "$1/cur"; do
        [ -d "$d" ] && n=$((n + $(find "$d" -maxdepth 1 -type f | wc -l)))
    done
    echo "$n"
}
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
rate() { awk "BEGIN { printf \"%.1f\", $MESSAGES / $1 }"; }

# run_load NAME PORT MAILDIR LOG -> TOTAL_S
run_load() {
    local name=$1 port=$2 maildir=$3 log=$4 start end n deadline
    echo "-- $name: $MESSAGES messages x ${SIZE} B, $SESSIONS sessions"
    start=$(now)
    smtp-source -m "$MESSAGES" -s "$SESSIONS" -l "$SIZE" -f sender@remote.test -t u@bench.test \
        -M bench.test "127.0.0.1:$port" || die "smtp-source failed against $name (log: $log)"
    deadline=$(( $(date +%s) + 900 ))
    while :; do
        n=$(count_maildir "$maildir")
        [ "$n" -ge "$MESSAGES" ] && break
        [ "$(date +%s)" -gt "$deadline" ] && { tail -20 "$log" >&2; die "$name delivered only $n of $MESSAGES in 15 minutes"; }
        sleep 0.05
    done
    end=$(now)
    TOTAL_S=$(calc "$end - $start")
    printf '   all %d in the Maildir after %.2f s: %s msg/s (load average now %s)\n' \
        "$n" "$TOTAL_S" "$(rate "$TOTAL_S")" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

echo "posthaste filter benchmark  $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) CPUs  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "work dir $WORK"

# ----------------------------------------------------------------------------------------
# The scanners, shared by both MTAs
# ----------------------------------------------------------------------------------------
REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS_TO_KILL+=($!)

R=$WORK/rspamd
mkdir -p "$R/local.d" "$R/override.d" "$R/db" "$R/run" "$R/log"
for m in rbl asn dmarc spf dkim hfilter fuzzy_check phishing url_reputation reputation neural \
    ratelimit greylist replies mx_check emails surbl multimap dcc spamassassin external_services \
    antivirus whitelist mime_types mid dkim_signing arc rspamd_update; do
    echo "enabled = false;" > "$R/local.d/$m.conf"
done
RSPAMD_NORMAL=$(free_port) RSPAMD_CTL=$(free_port) RSPAMD_PROXY=$(free_port)
echo "bind_socket = \"127.0.0.1:$RSPAMD_NORMAL\"; count = 2;" > "$R/override.d/worker-normal.inc"
echo "bind_socket = \"127.0.0.1:$RSPAMD_CTL\"; count = 1; password = \"bench\";" > "$R/override.d/worker-controller.inc"
# The proxy in milter mode scans itself (self_scan), as in rspamd's Postfix integration guide.
cat > "$R/override.d/worker-proxy.inc" <<EOF
bind_socket = "127.0.0.1:$RSPAMD_PROXY";
milter = yes;
timeout = 120s;
count = 2;
upstream "local" { default = yes; self_scan = yes; }
EOF
HS_CACHE=/var/tmp/posthaste-test-rspamd-hs-cache
mkdir -p "$HS_CACHE" && chown -R _rspamd:_rspamd "$HS_CACHE"
cat > "$R/local.d/options.inc" <<EOF
dns { nameserver = ["127.0.0.1:1"]; timeout = 1s; retransmits = 1; }
hs_cache_dir = "$HS_CACHE";
EOF
echo "servers = \"127.0.0.1:$REDIS_PORT\";" > "$R/local.d/redis.conf"
chown -R _rspamd:_rspamd "$R/db" "$R/run" "$R/log"
rspamd -f -u _rspamd -g _rspamd --var=LOCAL_CONFDIR="$R" --var=DBDIR="$R/db" --var=RUNDIR="$R/run" \
    --var=LOGDIR="$R/log" >"$R/out.log" 2>&1 &
PIDS_TO_KILL+=($!)
echo "-- starting rspamd (a cold start compiles rules for minutes on a busy machine)"
wait_port 127.0.0.1 "$RSPAMD_NORMAL" rspamd "$R/log/rspamd.log" 3000
wait_port 127.0.0.1 "$RSPAMD_PROXY" "rspamd proxy" "$R/log/rspamd.log" 3000
until curl -s "http://127.0.0.1:$RSPAMD_NORMAL/ping" | grep -q pong; do sleep 0.2; done

C=$WORK/clamd
mkdir -p "$C/db"
printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > "$C/eicar.txt"
echo "Eicar-Test-Signature:0:*:$(od -An -tx1 "$C/eicar.txt" | tr -d ' \n')" > "$C/db/eicar.ndb"
cat > "$C/clamd.conf" <<EOF
Foreground yes
DatabaseDirectory $C/db
LocalSocket $C/clamd.sock
PidFile $C/clamd.pid
User root
LogFile $C/clamd.log
EOF
clamd -c "$C/clamd.conf" >"$C/out.log" 2>&1 &
PIDS_TO_KILL+=($!)
for _ in $(seq 300); do [ -S "$C/clamd.sock" ] && break; sleep 0.1; done
[ -S "$C/clamd.sock" ] || die "clamd did not create $C/clamd.sock: $(tail -5 "$C/out.log")"

MILTER_PORT=$(free_port)
cat > "$C/clamav-milter.conf" <<EOF
Foreground yes
MilterSocket inet:$MILTER_PORT@127.0.0.1
ClamdSocket unix:$C/clamd.sock
User root
PidFile $C/milter.pid
LogFile $C/milter.log
OnInfected Reject
OnFail Defer
AddHeader Replace
EOF
clamav-milter -c "$C/clamav-milter.conf" >"$C/milter.out" 2>&1 &
PIDS_TO_KILL+=($!)
wait_port 127.0.0.1 "$MILTER_PORT" clamav-milter "$C/milter.out"

# ----------------------------------------------------------------------------------------
# posthaste
# ----------------------------------------------------------------------------------------
BIN=${POSTHASTE_BIN:-}
if [ -z "$BIN" ]; then
    command -v cargo >/dev/null || { [ -r "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
    echo "-- building posthaste (release)"
    cargo build --release --locked --quiet
    BIN=$REPO/target/release/posthaste
fi

bench_posthaste() { # NAME FILTERS(0|1) -> TOTAL_S
    local dir=$WORK/posthaste-$1 port conf pid
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
level = "warn"
[smtp]
max_connections_per_ip = 100000
[server]
user = "root"
[guard]
nftables = false
TOML
    if [ "$2" = 1 ]; then
        cat >> "$conf" <<TOML
[antispam]
rspamd = "http://127.0.0.1:$RSPAMD_NORMAL"
timeout = "120s"
[antivirus]
clamd = "$C/clamd.sock"
TOML
    fi
    "$BIN" --config "$conf" domain add bench.test >/dev/null
    echo "benchpass" | "$BIN" --config "$conf" user add u@bench.test --password-stdin >/dev/null
    setsid "$BIN" --config "$conf" serve >"$dir/serve.log" 2>&1 </dev/null &
    pid=$!
    PIDS_TO_KILL+=("$pid")
    wait_port 127.0.0.1 "$port" "posthaste serve" "$dir/serve.log"
    run_load "posthaste ($1)" "$port" "$dir/data/mail/bench.test/u" "$dir/serve.log"
    if [ "$2" = 1 ]; then
        grep -q "X-Spam-Status: No" "$(find "$dir/data/mail/bench.test/u/new" -type f | head -1)" ||
            die "posthaste delivered a message without X-Spam-Status: the filters were not in the path"
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ----------------------------------------------------------------------------------------
# Postfix (private instance) -> virtual(8) -> Maildir, optionally with both milters
# ----------------------------------------------------------------------------------------
bench_postfix() { # NAME FILTERS(0|1) -> TOTAL_S
    local p=$WORK/postfix-$1 port milters=""
    port=$(free_port)
    mkdir -p "$p/conf" "$p/queue" "$p/data" "$p/mail"
    chown postfix "$p/data"
    chown nobody:nogroup "$p/mail"
    [ "$2" = 1 ] && milters="inet:127.0.0.1:$RSPAMD_PROXY, inet:127.0.0.1:$MILTER_PORT"
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
virtual_mailbox_base = $p/mail
virtual_mailbox_maps = inline:{ u@bench.test=bench.test/u/ }
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_milters = $milters
milter_default_action = tempfail
milter_protocol = 6
CONF
    postfix_master_cf "$p/conf/master.cf" "$port"
    POSTFIX_CONF=$p/conf
    postfix -c "$POSTFIX_CONF" start >/dev/null 2>&1 || die "postfix did not start: $(tail -5 "$p/maillog" 2>/dev/null)"
    wait_port 127.0.0.1 "$port" Postfix "$p/maillog"
    run_load "Postfix ($1)" "$port" "$p/mail/bench.test/u" "$p/maillog"
    if [ "$2" = 1 ]; then
        grep -qi "^X-Virus-Scanned: ClamAV" "$(find "$p/mail/bench.test/u/new" -type f | head -1)" ||
            die "Postfix delivered a message without clamav-milter's header: the milters were not in the path"
    fi
    postfix -c "$POSTFIX_CONF" stop >/dev/null 2>&1 || true
    POSTFIX_CONF=""
}

bench_posthaste plain 0;   PH_PLAIN=$TOTAL_S
bench_posthaste filters 1; PH_FILT=$TOTAL_S
bench_postfix plain 0;     PF_PLAIN=$TOTAL_S
bench_postfix filters 1;   PF_FILT=$TOTAL_S

# Both MTAs really went through rspamd: its own counter of scanned messages.
SCANNED=$(curl -s -H 'Password: bench' "http://127.0.0.1:$RSPAMD_CTL/stat" | python3 -c 'import json,sys; print(json.load(sys.stdin)["scanned"])')
[ "$SCANNED" -ge $((2 * MESSAGES)) ] || die "rspamd scanned only $SCANNED messages, expected $((2 * MESSAGES))"

overhead() { awk "BEGIN { printf \"%.2f\", ($1 - $2) * 1000 / $MESSAGES }"; }
echo
echo "== results: $MESSAGES messages of $SIZE bytes, $SESSIONS parallel sessions, rspamd + clamd on the same machine"
printf '%-34s %12s %12s %22s\n' system "plain msg/s" "filters msg/s" "overhead ms/message"
printf '%-34s %12s %12s %22s\n' "posthaste (HTTP + INSTREAM)" "$(rate "$PH_PLAIN")" "$(rate "$PH_FILT")" "$(overhead "$PH_FILT" "$PH_PLAIN")"
printf '%-34s %12s %12s %22s\n' "Postfix (rspamd proxy + clamav-milter)" "$(rate "$PF_PLAIN")" "$(rate "$PF_FILT")" "$(overhead "$PF_FILT" "$PF_PLAIN")"
printf 'ratio posthaste/Postfix with filters (msg/s): %.2f\n' "$(calc "$PF_FILT / $PH_FILT")"
