#!/usr/bin/env bash
# Web benchmark: the admin panel's pages and the API with many accounts, server time.
#
#   bash bench/web.sh                      # N=1000 accounts, R=50 requests per URL
#   N=5000 R=100 POSTHASTE_BIN=target/profiling/posthaste bash bench/web.sh
#
# A fresh data directory gets one domain and N accounts (a SHA512-CRYPT hash from
# `openssl passwd -6`, so making them costs no Argon2), then `posthaste serve` (release
# build, HTTPS on 127.0.0.1) answers R requests each, over one keep-alive HTTP/2
# connection (curl), for:
#   /admin/                 the dashboard (counts, queue, disk, certificate, last check)
#   /admin/accounts         the account list's first page (50 rows, each with its usage
#                           read from its Maildir)
#   /api/v1/accounts        all N accounts as JSON (bearer token)
# Server time is what the daemon logs for each request ("web request", `micros`: from the
# parsed request to the finished response, TLS and the network excluded); the median and
# the 90th percentile are printed per URL. The target (docs/benchmarks.md): median ≤ 20 ms.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
R=${R:-50}
BIN=${POSTHASTE_BIN:-target/release/posthaste}
[ -x "$BIN" ] || { echo "error: no $BIN" >&2; echo "help: cargo build --locked --release (or set POSTHASTE_BIN)" >&2; exit 1; }

work=$(mktemp -d /tmp/posthaste-bench-web-XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SMTP=$(free_port); HTTPS=$(free_port)
mkdir -p "$work/data"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mail.example.test \
    -addext "subjectAltName=DNS:mail.example.test" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat > "$work/posthaste.toml" <<CONF
hostname = "mail.example.test"
data_dir = "$work/data"
[listen]
smtp = ["127.0.0.1:$SMTP"]
https = ["127.0.0.1:$HTTPS"]
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[log]
format = "json"
level = "info,posthaste::web=debug"
[server]
user = "root"
[guard]
nftables = false
CONF
ph() { "$BIN" --config "$work/posthaste.toml" "$@"; }

ph domain add example.test >/dev/null 2>&1
hash="{SHA512-CRYPT}$(openssl passwd -6 'bench password 1')"
echo "making $N accounts..."
start=$(date +%s)
for i in $(seq 1 "$N"); do
    ph user add "user$i@example.test" --password-hash "$hash" >/dev/null
done
echo "  $(( $(date +%s) - start )) s"
echo 'the admin password' | ph user add admin@example.test --password-stdin >/dev/null
ph user set admin@example.test --role admin >/dev/null
token=$(ph token create --role admin --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

ph serve > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$HTTPS),0.2)" 2>/dev/null && break
    sleep 0.1
done

base="https://mail.example.test:$HTTPS"
resolve="mail.example.test:$HTTPS:127.0.0.1"
jar="$work/cookies"
c() { curl -s --http2 --resolve "$resolve" --cacert "$work/cert.pem" --cookie "$jar" --cookie-jar "$jar" "$@"; }
csrf=$(c "$base/admin/login" | sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' | head -1)
c -o /dev/null --data-urlencode "csrf=$csrf" --data-urlencode "username=admin@example.test" \
    --data-urlencode "password=the admin password" "$base/admin/login"

# One curl per URL with R copies of it: one connection, requests one after the other.
urls() { for _ in $(seq 1 "$R"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$1"; done; }
for u in "/admin/" "/admin/accounts" ; do
    c -o /dev/null "$base$u"            # warm-up
    urls "$base$u" > "$work/urls"
    c -K "$work/urls"
done
c -o /dev/null -H "Authorization: Bearer $token" "$base/api/v1/accounts"
urls "$base/api/v1/accounts" > "$work/urls"
c -H "Authorization: Bearer $token" -K "$work/urls"
sleep 0.5

python3 - "$work/serve.log" "$R" "$N" <<'PY'
import json, sys
log, r, n = sys.argv[1], int(sys.argv[2]), sys.argv[3]
times = {}
for line in open(log):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("message") == "web request" and v.get("status") == 200:
        times.setdefault(v["path"], []).append(v["micros"] / 1000)
print(f"{n} accounts, last {r} requests per URL, server time in ms:")
print(f"{'URL':<20} {'median':>8} {'p90':>8} {'min':>8}")
for path in ["/admin/", "/admin/accounts", "/api/v1/accounts"]:
    t = sorted(times.get(path, [])[-r:])
    if not t:
        print(f"{path:<20} no samples"); continue
    med = t[len(t) // 2]; p90 = t[int(len(t) * 0.9) - 1]
    print(f"{path:<20} {med:8.2f} {p90:8.2f} {t[0]:8.2f}")
PY
