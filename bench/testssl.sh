#!/usr/bin/env bash
# testssl.sh against every TLS listener of a posthaste started here: 25 and 587 with
# STARTTLS (smtp), 465, 143 with STARTTLS (imap), 993, 110 with STLS (pop3), 995.
#
#   bash bench/testssl.sh            # all seven, one after another (~1.5 min each on 2 cores)
#   PORTS="imaps submission" bash bench/testssl.sh
#
# The certificate is a test CA's (chain served: leaf + CA), so the findings about the
# certificate itself (not trusted, no CRL/OCSP, short validity) are expected and listed
# apart; every other finding rated LOW or worse is printed and makes the script exit 1.
# Root on Debian 12 with the testssl.sh package. Not run by CI (a full scan of one port
# takes 1.5-2 minutes). Results: docs/testing.md ("TLS").
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${POSTHASTE_BIN:-$REPO/target/debug/posthaste}
[ -x "$BIN" ] || (cd "$REPO" && cargo build --locked)
command -v testssl >/dev/null || { echo "error: testssl not found: apt-get install testssl.sh" >&2; exit 1; }
WORK=$(mktemp -d /tmp/posthaste-testssl.XXXXXX)
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 365 -subj "/CN=posthaste test CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out leaf.csr \
    -subj "/CN=mail.example.test" 2>/dev/null
printf 'subjectAltName=DNS:mail.example.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >ext.cnf
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 365 \
    -extfile ext.cnf 2>/dev/null
cat leaf.pem ca.pem >fullchain.pem
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A PORT STARTTLS=([smtp]=smtp [submission]=smtp [imap]=imap [pop3]=pop3)
ALL="smtp submission submissions imap imaps pop3 pop3s"
mkdir -p data
{
    echo "hostname = \"mail.example.test\""
    echo "data_dir = \"$WORK/data\""
    echo "[listen]"
    for l in $ALL; do PORT[$l]=$(free_port); echo "$l = [\"127.0.0.1:${PORT[$l]}\"]"; done
    echo "[tls]"
    echo "cert = \"$WORK/fullchain.pem\""
    echo "key = \"$WORK/key.pem\""
    echo "[server]"
    echo "user = \"root\""
    echo "[guard]"
    echo "nftables = false"
    echo "allow = [\"127.0.0.0/8\"]"
} >posthaste.toml
setsid "$BIN" --config posthaste.toml serve >serve.log 2>&1 </dev/null &
PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${PORT[pop3s]}") 2>/dev/null && break
    sleep 0.1
done
status=0
for l in ${PORTS:-$ALL}; do
    args=(--quiet --color 0 --nodns none --warnings off --openssl-timeout 10 --add-ca ca.pem
        --ip 127.0.0.1 --jsonfile-pretty "$l.json")
    [ -n "${STARTTLS[$l]:-}" ] && args+=(--starttls "${STARTTLS[$l]}")
    echo "== $l (port ${PORT[$l]}${STARTTLS[$l]:+, STARTTLS})"
    start=$(date +%s)
    testssl "${args[@]}" "mail.example.test:${PORT[$l]}" >"$l.txt" 2>&1 || true
    python3 - "$l.json" "$(($(date +%s) - start))" <<'PY' || status=1
import json, sys
doc = json.load(open(sys.argv[1]))
def walk(x):
    if isinstance(x, dict):
        if "severity" in x and "id" in x:
            yield x
        for v in x.values():
            yield from walk(v)
    elif isinstance(x, list):
        for v in x:
            yield from walk(v)
rank = {"LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}
# Findings about the test certificate itself, not about the server.
CERT = ("cert_trust", "cert_chain_of_trust", "cert_revocation", "cert_expirationStatus",
        "cert_notAfter", "cert_ocspURL", "cert_crlDistributionPoints", "OCSP_stapling",
        "cert_extlifeSpan", "cert_caIssuers")
bad, cert, seen = [], [], {}
for f in walk(doc):
    seen[f["id"]] = f["finding"]
    if f["severity"] not in rank:
        continue
    (cert if f["id"].startswith(CERT) else bad).append(f)
for key in ("protocols", "SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cipher_order", "FS"):
    if key in seen:
        print("   %-14s %s" % (key, seen[key][:90]))
for f in cert:
    print("   (test certificate) %s %s: %s" % (f["severity"], f["id"], f["finding"][:90]))
for f in bad:
    print("   FINDING %s %s: %s" % (f["severity"], f["id"], f["finding"][:110]))
print("   %d findings rated LOW or worse besides the test certificate's (%s s)" % (len(bad), sys.argv[2]))
sys.exit(1 if bad else 0)
PY
done
exit $status
