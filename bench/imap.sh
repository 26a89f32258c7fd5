#!/usr/bin/env bash
# IMAP benchmark: posthaste vs Dovecot, same machine, same run, same mailboxes.
#
#   bash bench/imap.sh [-m MESSAGES] [-c CLIENTS] [-t SECONDS] [-i IDLE] [-I BIG_IDLE] [-o posthaste|dovecot|both]
#
#   -m  messages in the benchmark mailbox (default 10000; -m 100000 for the big one)
#   -c  parallel clients of the mixed load (default 8), each its own user and mailbox
#       (the first 1000 messages of the same set)
#   -t  seconds of mixed load per system (default 20; 0 skips it)
#   -i  idle logged-in connections (INBOX selected) for the memory figure (default 1000; 0 skips)
#   -I  idle connections posthaste must hold at once (default 10000; 0 skips)
#   APPENDS=N (environment): messages per connection of the APPEND phase (default 250; 0 skips)
#
# A mailbox of MESSAGES messages is generated once (bench/imap_load.py gen: 2-12 KB, every
# fifth multipart with an attachment, 70 % \Seen, 10 % \Flagged, Dovecot-style file names)
# and copied into posthaste's and Dovecot's Maildirs. Both servers serve IMAP over implicit
# TLS (posthaste has no plaintext LOGIN) with the same self-signed certificate, both run as
# the `posthaste` system user, and both check the same SHA512-CRYPT password hash, so logins
# cost the same. Dovecot runs its login processes in "high-performance" mode
# (service_count = 0) and one `imap` process per connection (its default).
#
# Measured with bench/imap_load.py (a small hand-written client, same for both):
#   1. RSS per idle connection: IDLE logged-in connections with INBOX selected; posthaste:
#      VmRSS of its process before/after; Dovecot: sum of PSS of all its processes.
#   2. posthaste only: BIG_IDLE concurrent idle connections (are they all still answered?),
#      INBOX selected (BIG_NOSELECT=1: only logged in). One descriptor per connection
#      (selected sessions share the folder's index; before that each kept the index open).
#   3. single connection, best of REPEAT (default 5): SELECT, FETCH 1:* (FLAGS UID RFC822.SIZE), header
#      fields, BODYSTRUCTURE, ENVELOPE, SEARCH SUBJECT/FROM/UNSEEN/SINCE/BODY. The first
#      SELECT (the server building its index from the copied Maildir) is timed on its own,
#      on INBOX and on FIRSTS (default 3) more copies as folders first1..firstN: the best.
#   4. mixed load: CLIENTS processes loop for SECONDS: connect, LOGIN, SELECT, 5 x (FETCH 50
#      headers, FETCH one BODY[], STORE \Seen), SEARCH UNSEEN, APPEND, NOOP, SEARCH ALL,
#      STORE \Deleted + EXPUNGE of the newest message, LOGOUT -> commands/s.
#   5. APPEND: 4 Python imaplib connections x APPENDS messages (2-12 KB) into folders of
#      their own, with the client's default socket (Nagle on) and with TCP_NODELAY -> msg/s.
# The ratio is posthaste/Dovecot: > 1 means posthaste is faster (or smaller for memory).
# Not a test and not run by CI: the numbers depend on the machine; see docs/benchmarks.md.
#
# POSTHASTE_BIN=path uses that binary instead of building target/release/posthaste.
# KEEP=1 keeps the work dir. PERF=1 records `perf record -g` of posthaste during phases 1, 3, 4
# and prints the top symbols (use with KEEP=1 to keep perf.data).
set -euo pipefail

MESSAGES=10000
CLIENTS=8
SECONDS_MIXED=20
IDLE=1000
BIG_IDLE=10000
ONLY=both
# Messages each of 4 imaplib connections APPENDs, once with a default socket and once with
# TCP_NODELAY (0 skips).
APPENDS=${APPENDS:-250}
# Extra copies of the big mailbox whose first SELECT (index build) is timed.
export FIRSTS=${FIRSTS:-3}
while getopts "m:c:t:i:I:o:h" opt; do
    case $opt in
        m) MESSAGES=$OPTARG ;;
        c) CLIENTS=$OPTARG ;;
        t) SECONDS_MIXED=$OPTARG ;;
        i) IDLE=$OPTARG ;;
        I) BIG_IDLE=$OPTARG ;;
        o) ONLY=$OPTARG ;;
        *) sed -n '2,40p' "$0"; exit 2 ;;
    esac
done
case $ONLY in posthaste|dovecot|both) ;; *) echo "-o must be posthaste, dovecot or both" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
REPO=$PWD
LOAD="python3 $REPO/bench/imap_load.py"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || die "$1 not found: install the Debian package $2"; }
need dovecot dovecot-core
need doveadm dovecot-core
need openssl openssl
need python3 python3
[ -x /usr/lib/dovecot/imap ] || die "Dovecot IMAP not found: install the Debian package dovecot-imapd"
[ "$(id -u)" -eq 0 ] || die "run as root (both servers switch to the posthaste user)"
export PATH=$PATH:/usr/sbin:/sbin
OS_USER=posthaste
id "$OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$OS_USER"
# 10,000 TLS connections need 10,000 descriptors in the client and in the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((BIG_IDLE + 200)) ] || die "ulimit -n is $(ulimit -n): too low for -I $BIG_IDLE"

WORK=$(mktemp -d /tmp/posthaste-imapbench-XXXXXX)
chmod 755 "$WORK"
PIDS_TO_KILL=()
DOVECOT_CONF=""
cleanup() {
    local pid
    [ -n "$DOVECOT_CONF" ] && doveadm -c "$DOVECOT_CONF" stop >/dev/null 2>&1 || true
    for pid in "${PIDS_TO_KILL[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK (KEEP set)"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port what logfile
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$2 did not listen on 127.0.0.1:$1; log:" >&2
    tail -30 "$3" >&2 || true
    exit 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
load() { cut -d' ' -f1 /proc/loadavg; }
# Sum of PSS over the processes whose parent chain reaches PID (Dovecot: master, login,
# auth, one imap per connection). Summing RSS would count shared libraries per process.
tree_pss_kib() {
    python3 - "$@" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1:]}
parent, pss = {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        status = open(f"/proc/{d}/status").read()
        fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
        parent[int(d)] = int(fields.get("PPid", "0").strip())
        rollup = open(f"/proc/{d}/smaps_rollup").read()
        pss[int(d)] = next(int(l.split()[1]) for l in rollup.splitlines() if l.startswith("Pss:"))
    except (OSError, StopIteration):
        pss[int(d)] = 0
total = 0
for pid in parent:
    p, seen = pid, 0
    while p and seen < 64:
        if p in roots:
            total += pss.get(pid, 0)
            break
        p, seen = parent.get(p, 0), seen + 1
print(total)
PY
}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
echo "   $(dovecot --version | sed 's/^/Dovecot /'), $(python3 --version)"

if [ -z "${POSTHASTE_BIN:-}" ]; then
    echo "-- cargo build --release --locked"
    cargo build --release --locked --quiet
    POSTHASTE_BIN=$REPO/target/release/posthaste
fi
echo "   posthaste $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"

echo "-- generating $MESSAGES messages (once, for both)"
$LOAD gen "$WORK/template" "$MESSAGES"
$LOAD gen "$WORK/small" 1000
$LOAD gen "$WORK/tiny" 100
echo "   $(du -sh "$WORK/template" | cut -f1) in $(find "$WORK/template/cur" -type f | wc -l) files"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 644 "$WORK/key.pem"
PW=bench-password
HASH=$(doveadm pw -s SHA512-CRYPT -p "$PW")
USERS="u idle $(seq -f 'm%g' 1 "$CLIENTS" | tr '\n' ' ')"

# fill MAILDIR USER: the same messages for both servers
fill() {
    local dir=$1 user=$2 src=$WORK/tiny
    case $user in u) src=$WORK/template ;; m*) src=$WORK/small ;; esac
    mkdir -p "$dir"
    cp -rp "$src/cur" "$src/new" "$src/tmp" "$dir/"  # -p: the mtime is the INTERNALDATE
    # More copies of the big mailbox as Maildir++ folders first1..firstN: each one's first
    # SELECT is an index build, timed (best of them and INBOX).
    if [ "$user" = u ]; then
        local i
        for i in $(seq "$FIRSTS"); do
            mkdir -p "$dir/.first$i"
            cp -rp "$src/cur" "$src/new" "$src/tmp" "$dir/.first$i/"
        done
    fi
}

# measure NAME PORT MEM_CMD -> $WORK/NAME.*.json|txt
measure() {
    local name=$1 port=$2 mem=$3
    if [ "$IDLE" -gt 0 ]; then
        measure_idle "$name" "$port" "$mem"
    fi
    echo "-- $name: single connection, $MESSAGES messages (load $(load))"
    $LOAD single 127.0.0.1 "$port" - "u@bench.test" "$PW" >"$WORK/$name.single.json"
    if [ "$SECONDS_MIXED" != 0 ]; then
        echo "-- $name: mixed load, $CLIENTS clients, ${SECONDS_MIXED}s (load $(load))"
        $LOAD mixed 127.0.0.1 "$port" - m "$PW" "$CLIENTS" "$SECONDS_MIXED" >"$WORK/$name.mixed.json"
        echo "   $(cut -c1-200 "$WORK/$name.mixed.json") (load $(load))"
    fi
    if [ "$APPENDS" != 0 ]; then
        # imaplib APPEND (synchronizing literals) with the client's default socket (Nagle
        # on, as nearly every client runs) and with TCP_NODELAY: the 40 ms delayed-ACK stall
        # shows as a large gap between the two.
        local nd
        for nd in 0 1; do
            echo "-- $name: imaplib APPEND, 4 connections x $APPENDS, TCP_NODELAY=$nd (load $(load))"
            $LOAD append 127.0.0.1 "$port" - "u@bench.test" "$PW" 4 "$APPENDS" "$nd" >"$WORK/$name.append$nd.json"
            echo "   $(cat "$WORK/$name.append$nd.json")"
        done
    fi
}

# measure_idle NAME PORT MEM_CMD -> $WORK/NAME.mem.json
measure_idle() {
    local name=$1 port=$2 mem=$3 before after fifo
    echo "-- $name: $IDLE idle connections (load $(load))"
    before=$($mem)
    fifo=$WORK/$name.idle.in
    mkfifo "$fifo"
    $LOAD idle 127.0.0.1 "$port" - "idle@bench.test" "$PW" "$IDLE" <"$fifo" >"$WORK/$name.idle.out" 2>"$WORK/$name.idle.err" &
    local idle_pid=$!
    exec 7>"$fifo"
    until grep -q ready "$WORK/$name.idle.out" 2>/dev/null; do
        kill -0 "$idle_pid" 2>/dev/null || { cat "$WORK/$name.idle.err" >&2; die "idle client died"; }
        sleep 0.5
    done
    sleep 2
    after=$($mem)
    echo >&7
    exec 7>&-
    wait "$idle_pid" || true
    echo "   $(head -1 "$WORK/$name.idle.out"), $(tail -1 "$WORK/$name.idle.out"); memory $before -> $after KiB"
    echo "{\"before\": $before, \"after\": $after, \"n\": $(awk '/ready/ {print $2}' "$WORK/$name.idle.out")}" >"$WORK/$name.mem.json"
    rm -f "$fifo"
    sleep 2
}

bench_posthaste() {
    local d=$WORK/posthaste port
    mkdir -p "$d/data"
    port=$(free_port)
    # serve needs an SMTP listener; nothing connects to it.
    cat >"$d/posthaste.toml" <<CONF
hostname = "mail.bench.test"
data_dir = "$d/data"

[listen]
smtp = ["127.0.0.1:$(free_port)"]
imaps = ["127.0.0.1:$port"]

[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"

[server]
user = "$OS_USER"

[log]
format = "json"
level = "info"

[imap]
max_connections = $((BIG_IDLE + IDLE + 1000))
max_connections_per_ip = $((BIG_IDLE + IDLE + 1000))
CONF
    chown -R "$OS_USER:" "$d/data"
    local ph="$POSTHASTE_BIN --config $d/posthaste.toml"
    $ph domain add bench.test >/dev/null
    for u in $USERS; do
        $ph user add "$u@bench.test" --password-hash "$HASH" >/dev/null
        fill "$d/data/mail/bench.test/$u" "$u"
    done
    chown -R "$OS_USER:" "$d/data"
    setsid nohup $ph serve >"$d/serve.log" 2>&1 </dev/null &
    PH_PID=$!
    PIDS_TO_KILL+=("$PH_PID")
    wait_port "$port" posthaste "$d/serve.log"
    sleep 1
    local perf_pid=""
    if [ -n "${PERF:-}" ]; then
        # Software clock: the VM has no hardware counters. Covers all three phases.
        perf record -q -e cpu-clock -F 999 -g -p "$PH_PID" -o "$WORK/perf.data" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    measure posthaste "$port" "rss_kib $PH_PID"
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" 2>/dev/null || true
        perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
            grep -v '^#' | grep '%' | head -40 >"$WORK/perf.txt" || true
        echo "   perf profile (self time, top symbols) in $WORK/perf.txt:"
        head -25 "$WORK/perf.txt" | sed 's/^/   /'
    fi
    if [ "$BIG_IDLE" -gt 0 ]; then
        echo "-- posthaste: $BIG_IDLE concurrent idle connections (load $(load))"
        local before after fifo=$WORK/big.in
        before=$(rss_kib "$PH_PID")
        mkfifo "$fifo"
        # The client process holds them all; spread over 127.0.0.2..9 source addresses
        # (loopback accepts any 127/8 address) to stay clear of ephemeral-port limits.
        NOSELECT=${BIG_NOSELECT:-} $LOAD idle 127.0.0.1 "$port" - "idle@bench.test" "$PW" "$BIG_IDLE" \
            127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9 \
            <"$fifo" >"$WORK/big.out" 2>"$WORK/big.err" &
        local idle_pid=$!
        exec 7>"$fifo"
        until grep -q ready "$WORK/big.out" 2>/dev/null; do
            kill -0 "$idle_pid" 2>/dev/null || { cat "$WORK/big.err" >&2; die "idle client died"; }
            sleep 1
        done
        sleep 2
        after=$(rss_kib "$PH_PID")
        echo >&7
        exec 7>&-
        wait "$idle_pid" || true
        echo "   $(head -1 "$WORK/big.out"), $(tail -1 "$WORK/big.out"); VmRSS $before -> $after KiB; errors: $(head -3 "$WORK/big.err" | tr '\n' ' ')"
        echo "{\"before\": $before, \"after\": $after, \"ready\": \"$(head -1 "$WORK/big.out")\", \"alive\": \"$(tail -1 "$WORK/big.out")\"}" >"$WORK/big.json"
        sleep 2
    fi
    kill "$PH_PID"
    wait "$PH_PID" 2>/dev/null || true
}

bench_dovecot() {
    local d=$WORK/dovecot port
    mkdir -p "$d/run" "$d/state" "$d/mail"
    port=$(free_port)
    : >"$d/passwd"
    for u in $USERS; do
        echo "$u@bench.test:$HASH::::$d/mail/$u::" >>"$d/passwd"
        fill "$d/mail/$u" "$u"
    done
    chown -R "$OS_USER:" "$d/mail"
    cat >"$d/dovecot.conf" <<CONF
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <$WORK/cert.pem
ssl_key = <$WORK/key.pem
auth_mechanisms = plain login
mail_uid = $OS_USER
mail_gid = $OS_USER
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~:LAYOUT=maildir++:UTF-8
namespace inbox {
  inbox = yes
  separator = /
}
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = passwd-file
  args = $d/passwd
}
default_process_limit = $((IDLE + 1000))
default_client_limit = $((IDLE + 1000))
default_vsz_limit = 1G
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $port
  }
  service_count = 0
  process_min_avail = 2
  client_limit = $((IDLE + 1000))
}
service imap {
  process_limit = $((IDLE + 1000))
}
service anvil {
  client_limit = $((2 * IDLE + 2200))
}
service auth {
  client_limit = $((2 * IDLE + 2000))
}
protocol imap {
  mail_max_userip_connections = $((IDLE + 1000))
}
CONF
    DOVECOT_CONF=$d/dovecot.conf
    dovecot -c "$DOVECOT_CONF" || die "dovecot did not start: $(tail -5 "$d/dovecot.log")"
    wait_port "$port" Dovecot "$d/dovecot.log"
    sleep 1
    local master
    master=$(cat "$d/run/master.pid")
    measure dovecot "$port" "tree_pss_kib $master"
    doveadm -c "$DOVECOT_CONF" stop >/dev/null 2>&1 || true
    DOVECOT_CONF=""
}

[ "$ONLY" = dovecot ] || bench_posthaste
[ "$ONLY" = posthaste ] || bench_dovecot

echo
echo "== results: $MESSAGES messages, $CLIENTS mixed clients x ${SECONDS_MIXED}s, $IDLE idle connections; load now $(load)"
python3 - "$WORK" "$IDLE" <<'PY'
import json, os, sys
work, idle = sys.argv[1], int(sys.argv[2])
def get(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) else None
ph_s, dc_s = get("posthaste.single.json"), get("dovecot.single.json")
print("%-72s %10s %10s %7s" % ("single connection (seconds, best of %s)" % os.environ.get("REPEAT", "5"), "posthaste", "Dovecot", "ratio"))
for k in (ph_s or dc_s or {}):
    a = ph_s[k]["seconds"] if ph_s else None
    b = dc_s[k]["seconds"] if dc_s else None
    r = "%.2f" % (b / a) if a and b else "-"
    print("%-72s %10s %10s %7s" % (k, "%.3f" % a if a is not None else "-", "%.3f" % b if b is not None else "-", r))
ph_m, dc_m = get("posthaste.mixed.json"), get("dovecot.mixed.json")
a = ph_m["per_second"] if ph_m else None
b = dc_m["per_second"] if dc_m else None
print("%-72s %10s %10s %7s" % ("mixed load, commands/s (errors)",
      "%.0f (%d)" % (a, ph_m["errors"]) if ph_m else "-", "%.0f (%d)" % (b, dc_m["errors"]) if dc_m else "-",
      "%.2f" % (a / b) if a and b else "-"))
for nd, label in (("0", "default socket"), ("1", "TCP_NODELAY")):
    pa, da = get("posthaste.append%s.json" % nd), get("dovecot.append%s.json" % nd)
    a = pa["per_second"] if pa else None
    b = da["per_second"] if da else None
    print("%-72s %10s %10s %7s" % ("imaplib APPEND, 4 connections, msg/s, %s" % label,
          "%.0f" % a if a else "-", "%.0f" % b if b else "-", "%.2f" % (a / b) if a and b else "-"))
p0, p1 = get("posthaste.append0.json"), get("posthaste.append1.json")
if p0 and p1:
    print("posthaste APPEND, default socket / TCP_NODELAY: %.2f (the 40 ms stall would make it ~0.05)" % (p0["per_second"] / p1["per_second"]))
ph_i, dc_i = get("posthaste.mem.json"), get("dovecot.mem.json")
def per(m):
    return (m["after"] - m["before"]) / max(m["n"], 1)
print("%-72s %10s %10s %7s" % ("memory per idle connection, KiB (posthaste VmRSS, Dovecot PSS sum)",
      "%.1f" % per(ph_i) if ph_i else "-", "%.1f" % per(dc_i) if dc_i else "-",
      "%.2f" % (per(dc_i) / per(ph_i)) if ph_i and dc_i and per(ph_i) > 0 else "-"))
big = get("big.json")
if big:
    print("posthaste, many idle connections: %s; %s; VmRSS %d -> %d KiB" % (big["ready"], big["alive"], big["before"], big["after"]))
PY
