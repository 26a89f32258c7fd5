#!/usr/bin/env bash
# The test command: `bash tests/run.sh [extra cargo test arguments]`.
#
# On a fresh Debian 12 as root it installs the packages the tests drive (only those
# missing), makes sure no system Postfix/Dovecot/dnsmasq that apt may have started holds
# the ports the tests use, builds, runs the whole suite, and then the fresh-server install
# test (vm-tests/debian-nspawn.sh). Tests never skip a missing
# component, they fail, so the packages are installed here rather than checked there.
#
#   bash tests/run.sh                          # everything
#   bash tests/run.sh --test it harness_selftest::  # one suite of the integration binary
#   bash tests/run.sh -- --nocapture           # passed through to cargo test
#
# Exits non-zero on any failure.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

PACKAGES=(
    postfix swaks dnsmasq postgresql dovecot-imapd dovecot-pop3d dovecot-lmtpd isync
    fetchmail curl openssl python3 libnet-ssleay-perl libio-socket-ssl-perl ca-certificates
    nftables iproute2 mmdebstrap systemd-container python3-dkim python3-nacl pebble
    rspamd redis-server redis-tools clamav-daemon clamav clamdscan clamav-milter
    chromium chromium-driver python3-pip
)

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "test packages: all installed"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]}
help: run this script as root once (it installs them), or: sudo apt-get install ${missing[*]}"
    fi
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get: this script targets Debian 12"
    say "installing: ${missing[*]}"
    # Postfix asks how it should run; "Local only" needs no further answers.
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    # Keep apt from starting the daemons it installs: the tests run their own instances,
    # and a system one would hold ports. Only if the host has no policy of its own.
    local policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# added by posthaste tests/run.sh while installing packages\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    } || rc=$?
    if [ -n "$policy_added" ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ $rc -eq 0 ] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
}

# Stops a daemon found through its pid file (never by process name: other people's
# test daemons may run on this machine).
stop_pidfile() {
    local name=$1 pidfile=$2 pid
    [ -r "$pidfile" ] || return 0
    pid=$(tr -dc '0-9' < "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    say "stopping the system $name (pid $pid) so it holds no test ports"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_system_daemons() {
    # The system Postfix listens on 127.0.0.1:25 ("Local only"); `postfix stop` uses its
    # own pid file and affects only the default instance, not the tests' private ones.
    if command -v postfix >/dev/null && postfix status >/dev/null 2>&1; then
        say "stopping the system Postfix"
        postfix stop || true
    fi
    if command -v doveadm >/dev/null && [ -e /run/dovecot/master.pid ]; then
        stop_pidfile dovecot /run/dovecot/master.pid
    fi
    stop_pidfile dnsmasq /run/dnsmasq/dnsmasq.pid
    # A posthaste installed here in direct mode (the README's first command) holds 25, 465,
    # 587, 143, 993, 110 and 995 on all addresses, which the tests' peers need on loopback
    # addresses; the components it started hold rspamd's, redis's and clamd's ports.
    stop_pidfile posthaste /var/lib/posthaste/posthaste.pid
    stop_pidfile rspamd /run/rspamd/rspamd.pid
    stop_pidfile redis /run/redis/redis-server.pid
    stop_pidfile clamd /run/clamav/clamd.pid
    stop_pidfile freshclam /run/clamav/freshclam.pid
    return 0
}

find_cargo() {
    if ! command -v cargo >/dev/null; then
        # rustup installs into ~/.cargo/bin, which a non-login CI shell may not have in PATH.
        # shellcheck disable=SC1091
        [ -r "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || die "cargo not found.
help: install the Rust toolchain named in Cargo.toml (rust-version), e.g. with rustup:
      https://rustup.rs, then rerun: bash tests/run.sh"
}

# The web tests drive Debian's chromium with Python selenium from PyPI (tests/py/web_browser.py).
install_selenium() {
    if python3 -c 'import selenium' 2>/dev/null; then
        say "python selenium: installed"
        return
    fi
    say "installing python selenium (PyPI)"
    # Debian's own python3 refuses pip installs into it unless told (PEP 668).
    python3 -m pip install -q selenium 2>/dev/null ||
        python3 -m pip install -q --break-system-packages selenium ||
        die "cannot install selenium with pip
help: python3 -m pip install selenium (the web browser test needs it)"
}

install_packages
install_selenium
stop_system_daemons
find_cargo

say "cargo $(cargo --version | cut -d' ' -f2), rustc $(rustc --version | cut -d' ' -f2)"

say "cargo build --locked"
cargo build --locked

# All targets (lib, bins, integration tests, examples, benches in test mode), then the
# doctests, which --all-targets leaves out. Both run even if the first fails, so one
# report shows everything that is broken.
# The integration tests are one binary (tests/it/main.rs) whose tests mostly wait on the
# daemons and clients they drive, so more threads than cores pay off (about a minute
# instead of two on 2 cores).
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-6}

status=0
if [ $# -gt 0 ]; then
    say "cargo test --locked $*"
    cargo test --locked "$@" || status=$?
else
    say "cargo test --locked --no-fail-fast --all-targets"
    cargo test --locked --no-fail-fast --all-targets || status=$?
    say "cargo test --locked --doc"
    cargo test --locked --doc || status=$?
    # The real install on a fresh Debian 12 with systemd as PID 1 (a container), then
    # direct mode: install → posthaste check → unchanged rerun → second domain → uninstall.
    say "vm-tests/debian-nspawn.sh (fresh Debian root, real apt/systemd install)"
    bash vm-tests/debian-nspawn.sh || status=$?
fi

if [ $status -ne 0 ]; then
    die "tests failed (exit $status). Failed tests keep their directory (path printed
above as '[harness] kept test dir'), with every daemon's log inside."
fi
say "all tests passed"
