#!/usr/bin/env bash
# The real install on a fresh Debian booted with systemd as PID 1, in a container: what
# tests/it/install.rs cannot show (apt, useradd, the hardened unit really starting, the
# daemon listening, reruns and uninstall on a live system). Slow (about a minute) and
# root only; tests/run.sh runs it after the cargo tests. By hand:
#
#   sudo bash vm-tests/debian-nspawn.sh            # SUITE=trixie for Debian 13
#   POSTHASTE_BIN=target/release/posthaste KEEP=1 sudo -E bash vm-tests/debian-nspawn.sh
#
# The root is made with mmdebstrap from this machine's own apt sources, with the
# component packages already in it, and booted with --private-network: the container
# sees only its own loopback, so its port 25 is not the host's, and nothing of the host
# (its /etc, its services, its network) is touched. See docs/install.md.
#
# Two phases on the same root: booted with systemd (unit, enabled services, IPv6 on ::1,
# site settings in conf.d kept by reruns, a hand-edited posthaste.toml refused without
# --force, a second serve refused), then entered without booting (direct mode: no
# systemd, the installer starts the daemon itself).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
SUITE=${SUITE:-bookworm}
BIN=${POSTHASTE_BIN:-$HERE/target/debug/posthaste}
WORK=$(mktemp -d /tmp/posthaste-vm.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID=

log() { printf '[vm-test] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" || true          # nspawn halts the container cleanly
        for _ in $(seq 50); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "run as root (mmdebstrap and systemd-nspawn need it)"
[ -x "$BIN" ] || fail "no posthaste binary at $BIN (cargo build --locked, or set POSTHASTE_BIN)"
need() { command -v "$1" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null; }
need mmdebstrap mmdebstrap
need systemd-nspawn systemd-container
need nsenter util-linux

# This machine's apt sources: the only mirror that answers here.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && sources+=("$f")
done

log "building a $SUITE root in $ROOT"
mmdebstrap --quiet --variant=apt \
    --include=ca-certificates,systemd-sysv,dbus,iproute2,procps,rspamd,redis-server,nftables \
    "$SUITE" "$ROOT" "${sources[@]}" >"$WORK/mmdebstrap.log" 2>&1 || { cat "$WORK/mmdebstrap.log"; fail "mmdebstrap"; }

# mmdebstrap writes no /etc/hosts; a real system has one (rspamd binds "localhost:11333").
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
install -m 0755 "$BIN" "$ROOT/root/posthaste"
printf 'a long enough secret\n' >"$ROOT/root/postmaster.pass"
answers() {
    cat <<YAML
hostname: mail.example.test
domains: [$1]
postmaster: {password_file: ./postmaster.pass}
# The ~250 MB ClamAV signatures cannot be downloaded here; the rest is all real.
components: {antispam: true, antivirus: false, guard: true}
tls: {mode: self-signed}
YAML
}
answers "example.test" >"$ROOT/root/answers.yaml"
answers "example.test, second.test" >"$ROOT/root/answers2.yaml"

log "booting it with systemd"
systemd-nspawn -D "$ROOT" --register=no --keep-unit --console=read-only --private-network -b \
    >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
SYSTEMD_PID=
for _ in $(seq 100); do
    SYSTEMD_PID=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [ -n "$SYSTEMD_PID" ] && break
    sleep 0.1
done
[ -n "$SYSTEMD_PID" ] || { cat "$WORK/console.log"; fail "systemd did not start in the container"; }
ct() { nsenter -t "$SYSTEMD_PID" -a "$@"; }
ct systemctl is-system-running --wait >/dev/null || true

now_ms() { date +%s%3N; }
log "install (ends with posthaste check)"
t0=$(now_ms)
ct sh -c 'cd /root && ./posthaste install --answers answers.yaml --yes' >"$WORK/install.log" 2>&1 \
    || { cat "$WORK/install.log"; fail "install"; }
t_install=$(( $(now_ms) - t0 ))
grep -q "0 failed" "$WORK/install.log" || { cat "$WORK/install.log"; fail "the install printed no passing check"; }
ct systemctl is-active --quiet posthaste || { ct journalctl -u posthaste --no-pager | tail -30; fail "posthaste is not active"; }
ct systemctl is-active --quiet rspamd || { ct systemctl status rspamd --no-pager | tail -20; fail "rspamd is not active"; }
listening() { ct ss -Hltn "sport = :$1" | grep -q .; }
for port in 25 465 587; do
    for _ in $(seq 50); do listening "$port" && break; sleep 0.2; done
    listening "$port" || { ct journalctl -u posthaste --no-pager | tail -30; fail "nothing listens on $port"; }
done
banner=$(ct timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/25; head -n1 <&3' || true)
case "$banner" in 220*mail.example.test*) ;; *) fail "SMTP banner: $banner" ;; esac
ct sh -c 'ps -o user= -C posthaste' | grep -qx posthaste || fail "the daemon does not run as posthaste"
# The unit gives the daemon CAP_NET_ADMIN for the guard: it made its nftables table itself.
ct nft list table inet posthaste >/dev/null || { ct journalctl -u posthaste --no-pager | tail -20; fail "the daemon did not create its nftables table"; }
ct /usr/local/sbin/posthaste status || fail "status"
t0=$(now_ms)
ct /usr/local/sbin/posthaste check --json >"$WORK/check.json" || { cat "$WORK/check.json"; fail "posthaste check"; }
t_check=$(( $(now_ms) - t0 ))
python3 - "$WORK/check.json" <<'PY' || fail "check --json"
import json, sys
r = json.load(open(sys.argv[1]))
names = [c["name"] for c in r["checks"] if c["status"] == "pass"]
need = ["tls smtp", "tls submissions", "tls imaps", "tls pop3s", "mx refuses relaying", "submission", "imap reads it back", "pop3 reads it back"]
missing = [n for n in need if not any(x.startswith(n) for x in names)]
print("missing passes:", missing) if missing else None
sys.exit(1 if missing or not r["ok"] else 0)
PY
ct systemd-analyze security posthaste --no-pager 2>/dev/null | tail -1 || true

log "rerun: only none"
ct sh -c 'cd /root && ./posthaste install --answers answers.yaml --dry-run --json' >"$WORK/rerun.json"
# posthaste's own steps without package installation: an unchanged rerun, check included.
t0=$(now_ms)
ct sh -c 'cd /root && ./posthaste install --answers answers.yaml --yes' >"$WORK/rerun.log" 2>&1 \
    || { cat "$WORK/rerun.log"; fail "unchanged rerun"; }
t_rerun=$(( $(now_ms) - t0 ))
grep -q "nothing to do" "$WORK/rerun.log" || { cat "$WORK/rerun.log"; fail "the unchanged rerun changed something"; }
python3 - "$WORK/rerun.json" <<'PY' || fail "the rerun plans changes"
import json, sys
plan = json.load(open(sys.argv[1]))
left = [c for c in plan["changes"] if c["action"] != "none"]
print(json.dumps(left, indent=1)) if left else None
sys.exit(1 if left else 0)
PY

# EHLO on port 25 of an address inside the container; prints the reply lines.
ehlo() {
    ct timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/25"; read -r _ <&3; printf "EHLO vm-test\r\n" >&3
        while read -r l <&3; do printf "%s\n" "$l"; case "$l" in 250\ *) break ;; esac; done
        printf "QUIT\r\n" >&3' _ "$1" || true
}
wait_smtp() { for _ in $(seq 50); do listening 25 && return 0; sleep 0.2; done; ct journalctl -u posthaste --no-pager | tail -30; fail "nothing listens on 25"; }

log "IPv6: the generated [::] listeners answer on ::1 as on 127.0.0.1"
ehlo ::1 | grep -q "^250" || fail "no SMTP over ::1: $(ehlo ::1)"

log "site settings in conf.d: the daemon reads them, a rerun keeps them"
ct test -d /etc/posthaste/conf.d || fail "the install made no /etc/posthaste/conf.d"
ct test -f /etc/posthaste/install-state.json || fail "no install state"
ct sh -c 'printf "[smtp]\nmax_message_size = 10485760\n[log]\nlevel = \"debug\"\n" > /etc/posthaste/conf.d/50-site.toml'
ct systemctl restart posthaste
wait_smtp
for ip in 127.0.0.1 ::1; do
    ehlo "$ip" | grep -q "SIZE 10485760" || fail "conf.d not applied over $ip: $(ehlo "$ip")"
done
ct sh -c 'cd /root && ./posthaste install --answers answers.yaml --yes' >"$WORK/confd-rerun.log" 2>&1 \
    || { cat "$WORK/confd-rerun.log"; fail "rerun with conf.d"; }
grep -q "nothing to do" "$WORK/confd-rerun.log" || { cat "$WORK/confd-rerun.log"; fail "the rerun changed something"; }
ct grep -q 'max_message_size = 10485760' /etc/posthaste/conf.d/50-site.toml || fail "the rerun touched conf.d"
ehlo 127.0.0.1 | grep -q "SIZE 10485760" || fail "conf.d lost after the rerun"

log "a hand edit of posthaste.toml: refused without --force, kept beside it with --force"
ct sed -i 's/^level = "info"/level = "warn"/' /etc/posthaste/posthaste.toml
if ct sh -c 'cd /root && ./posthaste install --answers answers.yaml --yes' >"$WORK/edited.log" 2>&1; then
    cat "$WORK/edited.log"; fail "the install replaced a hand-edited posthaste.toml without --force"
fi
grep -q "changed by hand" "$WORK/edited.log" && grep -q "conf.d" "$WORK/edited.log" && grep -q '^ *-level = "warn"' "$WORK/edited.log" \
    || { cat "$WORK/edited.log"; fail "the refusal shows no diff or no help"; }
ct grep -q '^level = "warn"' /etc/posthaste/posthaste.toml || fail "the refused install changed posthaste.toml"
ct sh -c 'cd /root && ./posthaste install --answers answers.yaml --yes --force' >"$WORK/forced.log" 2>&1 \
    || { cat "$WORK/forced.log"; fail "install --force"; }
ct sh -c 'grep -q "^level = \"warn\"" /etc/posthaste/posthaste.toml.bak-*' || fail "--force kept no copy of the edited file"
ct grep -q '^level = "info"' /etc/posthaste/posthaste.toml || fail "--force did not replace the file"
ct systemctl is-active --quiet posthaste || fail "posthaste is not active after --force"

log "a second serve beside the running daemon is refused before it touches the nftables table"
if ct timeout 20 /usr/local/sbin/posthaste serve >"$WORK/second-serve.log" 2>&1; then fail "a second serve started"; fi
grep -q "already running" "$WORK/second-serve.log" || { cat "$WORK/second-serve.log"; fail "second serve: $(tail -3 "$WORK/second-serve.log")"; }
ct nft list table inet posthaste >/dev/null || fail "the refused second serve removed the running daemon's table"
ct systemctl is-active --quiet posthaste || fail "posthaste stopped"

log "rerun with a second domain"
t0=$(now_ms)
ct sh -c 'cd /root && ./posthaste install --answers answers2.yaml --yes' >"$WORK/second.log" 2>&1 \
    || { cat "$WORK/second.log"; fail "second install"; }
t_second=$(( $(now_ms) - t0 ))
ct /usr/local/sbin/posthaste domain list | grep -qx second.test || fail "second.test missing"

log "uninstall (mail stays), then purge"
ct /usr/local/sbin/posthaste uninstall --yes || fail "uninstall"
ct systemctl cat posthaste >/dev/null 2>&1 && fail "the unit is still there"
ct test -f /var/lib/posthaste/directory.db || fail "uninstall without --purge removed the directory"
ct /root/posthaste uninstall --purge --yes || fail "purge"
ct test -e /var/lib/posthaste && fail "purge left /var/lib/posthaste"
ct getent passwd posthaste >/dev/null && fail "purge left the posthaste user"

log "halting the container"
kill -TERM "$NSPAWN_PID"
wait "$NSPAWN_PID" || true
NSPAWN_PID=

# Direct mode: the same root entered without booting it, so there is no systemd; the
# installer starts the components through their init scripts and posthaste itself in the
# background (root binds the ports, then the daemon drops to the posthaste user).
log "direct mode (no systemd)"
cat >"$ROOT/root/direct.sh" <<'SH'
set -eu
cd /root
./posthaste install --answers answers.yaml --yes
/usr/local/sbin/posthaste status
/usr/local/sbin/posthaste check
pid=$(cat /var/lib/posthaste/posthaste.pid)
[ "$(ps -o user= -p "$pid")" = posthaste ] || { echo "daemon not running as posthaste"; exit 1; }
banner=$(timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/25; head -n1 <&3' || true)
case "$banner" in 220*) ;; *) echo "SMTP banner: $banner"; cat /var/log/posthaste/posthaste.log; exit 1 ;; esac
./posthaste install --answers answers.yaml --dry-run --json > /root/direct-rerun.json
/usr/local/sbin/posthaste uninstall --purge --yes
if /root/posthaste status 2>/dev/null; then echo "still running after uninstall"; exit 1; fi
echo "direct mode ok"
SH
systemd-nspawn -D "$ROOT" --register=no --keep-unit --private-network --as-pid2 --pipe \
    /bin/bash /root/direct.sh >"$WORK/direct.log" 2>&1 || { cat "$WORK/direct.log"; fail "direct mode"; }
grep -q "direct mode ok" "$WORK/direct.log" || { cat "$WORK/direct.log"; fail "direct mode"; }
python3 - "$ROOT/root/direct-rerun.json" <<'PY' || fail "the direct-mode rerun plans changes"
import json, sys
plan = json.load(open(sys.argv[1]))
left = [c for c in plan["changes"] if c["action"] != "none"]
print(json.dumps(left, indent=1)) if left else None
sys.exit(1 if left else 0)
PY

printf '[vm-test] timings: fresh install to a passing check %d ms (packages preinstalled in the root), unchanged rerun with check %d ms, rerun adding a domain %d ms, posthaste check %d ms\n' \
    "$t_install" "$t_rerun" "$t_second" "$t_check" >&2
log "1 passed, 0 failed"
