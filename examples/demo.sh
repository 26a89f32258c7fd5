#!/usr/bin/env bash
# A demo that installs nothing (the README's main job is the real install): build posthaste,
# start `posthaste serve` on loopback
# with an example configuration (SQLite directory, self-signed TLS), add a domain and a user,
# and prove that mail comes in through the MX and goes out through submission to a remote MX
# found in DNS. The "remote" side is examples/demo_peer.py: a tiny DNS server for
# remote.example and an SMTP receiver on 127.0.0.2, so nothing leaves this machine.
#
# Safe to rerun: it stops the demo server it started before and keeps the demo data.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=${POSTHASTE_DEMO_DIR:-/var/tmp/posthaste-demo}
BIN=target/release/posthaste
CONF=$DEMO/posthaste.toml

need() { command -v "$1" >/dev/null 2>&1; }
if ! need openssl || ! need python3; then
    echo "== installing openssl and python3"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl python3
fi
need cargo || { echo "error: cargo is missing (help: install the Rust toolchain, 1.95 or newer)"; exit 1; }

echo "== building posthaste (release)"
cargo build --release --locked

mkdir -p "$DEMO/tls" "$DEMO/data"
stop_pidfile() {
    local f=$1
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        kill "$(cat "$f")"
        for _ in $(seq 50); do kill -0 "$(cat "$f" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
    fi
}
stop_pidfile "$DEMO/peer.pid"
if [ -f "$DEMO/data/posthaste.pid" ] && kill -0 "$(cat "$DEMO/data/posthaste.pid")" 2>/dev/null; then
    echo "== stopping the previous demo server"
    kill "$(cat "$DEMO/data/posthaste.pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$DEMO/data/posthaste.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
fi

# The daemon drops root after binding; it runs as the system user posthaste.
if ! id posthaste >/dev/null 2>&1; then
    useradd --system --home-dir "$DEMO/data" --no-create-home --shell /usr/sbin/nologin posthaste
fi

if [ ! -f "$DEMO/tls/cert.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=mail.example.test \
        -addext "subjectAltName=DNS:mail.example.test,IP:127.0.0.1" \
        -keyout "$DEMO/tls/key.pem" -out "$DEMO/tls/cert.pem" 2>/dev/null
    chmod 600 "$DEMO/tls/key.pem"
fi
chown -R posthaste: "$DEMO/data" "$DEMO/tls"
chmod 750 "$DEMO/data"

cat > "$CONF" <<TOML
# Demo configuration: loopback only, high ports so no system MTA is disturbed.
hostname = "mail.example.test"
data_dir = "$DEMO/data"

[listen]
smtp        = ["127.0.0.1:2525"]
submission  = ["127.0.0.1:2587"]
submissions = ["127.0.0.1:2465"]

[tls]
cert = "$DEMO/tls/cert.pem"
key  = "$DEMO/tls/key.pem"

[log]
format = "json"

# Demo only: resolve through examples/demo_peer.py and deliver to port 2526, so the
# outbound path runs without the Internet. Remove both for real use.
[dns]
nameservers = ["127.0.0.1:5354"]

[queue]
remote_port = 2526
retry_initial = "10s"
retry_max = "1m"
TOML

echo "== domain and postmaster account"
$BIN --config "$CONF" domain list | grep -qx example.test || $BIN --config "$CONF" domain add example.test
if [ ! -f "$DEMO/postmaster.pass" ]; then
    (umask 077; openssl rand -base64 18 > "$DEMO/postmaster.pass")
fi
if ! $BIN --config "$CONF" user list example.test | grep -q '^postmaster@example.test'; then
    $BIN --config "$CONF" user add postmaster@example.test --password-file "$DEMO/postmaster.pass"
fi

echo "== starting the demo remote MX (DNS 127.0.0.1:5354, SMTP 127.0.0.2:2526, mail in $DEMO/remote-mx)"
setsid nohup python3 examples/demo_peer.py 5354 2526 "$DEMO/remote-mx" >"$DEMO/peer.log" 2>&1 </dev/null &
echo $! > "$DEMO/peer.pid"

echo "== starting posthaste serve (log: $DEMO/serve.log)"
setsid nohup "$BIN" --config "$CONF" serve >"$DEMO/serve.log" 2>&1 </dev/null &
for _ in $(seq 100); do
    python3 -c 'import socket; socket.create_connection(("127.0.0.1", 2525), 0.2)' 2>/dev/null && break
    sleep 0.1
done

echo "== round trip: in through the MX; out through submission (STARTTLS + AUTH) to the remote MX"
python3 - "$DEMO" <<'PY'
import smtplib, ssl, sys, os, time
demo = sys.argv[1]
pw = open(os.path.join(demo, "postmaster.pass")).read().strip()
inbox = os.path.join(demo, "data/mail/example.test/postmaster")
def count():
    return sum(len(os.listdir(os.path.join(inbox, d))) for d in ("new", "cur") if os.path.isdir(os.path.join(inbox, d)))
before = count()
remote = os.path.join(demo, "remote-mx")
def remote_files():
    return set(os.listdir(remote)) if os.path.isdir(remote) else set()
remote_before = remote_files()
with smtplib.SMTP("127.0.0.1", 2525) as s:
    s.sendmail("someone@remote.example", ["postmaster@example.test"],
               b"From: someone@remote.example\r\nSubject: demo via MX\r\n\r\nhello\r\n")
ctx = ssl.create_default_context(cafile=os.path.join(demo, "tls/cert.pem"))
with smtplib.SMTP("127.0.0.1", 2587) as s:
    s.starttls(context=ctx)
    s.login("postmaster@example.test", pw)
    s.sendmail("postmaster@example.test", ["postmaster@example.test"],
               b"From: postmaster@example.test\r\nTo: postmaster@example.test\r\nSubject: demo via submission\r\n\r\nhello\r\n")
    s.sendmail("postmaster@example.test", ["friend@remote.example"],
               b"From: postmaster@example.test\r\nTo: friend@remote.example\r\nSubject: demo outbound\r\n\r\nhello out there\r\n")
after = count()
print(f"postmaster@example.test INBOX: {before} -> {after} messages ({inbox})")
new = []
for _ in range(100):
    new = [f for f in remote_files() - remote_before if "friend@remote.example" in f]
    if new:
        break
    time.sleep(0.1)
print(f"remote MX received: {sorted(new)[-1] if new else 'nothing (see the queue: posthaste queue list)'}")
sys.exit(0 if after == before + 2 and new else 1)
PY

cat <<TXT
== posthaste is running (pid $(cat "$DEMO/data/posthaste.pid"))
   MX          127.0.0.1:2525
   submission  127.0.0.1:2587 (STARTTLS)   submissions 127.0.0.1:2465 (TLS)
   remote MX   127.0.0.2:2526 (demo), received mail in $DEMO/remote-mx
   account     postmaster@example.test, password in $DEMO/postmaster.pass
   config      $CONF
   admin       $BIN --config $CONF user add alice@example.test
   stop        kill \$(cat $DEMO/data/posthaste.pid) \$(cat $DEMO/peer.pid)
TXT
