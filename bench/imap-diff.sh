#!/usr/bin/env bash
# The differential IMAP harness (tests/it/imap_diff.rs) with a longer seed sweep: the same
# scripted scenarios as the test command, plus random sessions for every seed given.
#
#   bash bench/imap-diff.sh [FIRST_SEED] [COUNT]     # default: seeds 1..200
#
# Needs what the test needs (root, dovecot-imapd, python3). Prints the differences found,
# with their seed, and exits non-zero if there are any. Seeds run in batches of 20 (one
# account per scenario and seed), so a failing batch names a small range to rerun with
# IMAP_DIFF_SEEDS="…" cargo test --locked --test it imap_diff::. Set IMAP_DIFF_TRACE=FILE
# to log every command and raw answer of both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
first=${1:-1}
count=${2:-200}
last=$((first + count - 1))
failed=0
cargo test --locked --test it --no-run >/dev/null 2>&1 || cargo test --locked --test it --no-run
for ((start = first; start <= last; start += 20)); do
    end=$((start + 19 > last ? last : start + 19))
    seeds=$(seq -s, "$start" "$end")
    echo "== seeds $start..$end"
    log=$(mktemp)
    if ! IMAP_DIFF_SEEDS="$seeds" cargo test --locked --test it imap_diff:: >"$log" 2>&1; then
        failed=1
    fi
    grep -E "unexplained|^\[|  posthaste:|  dovecot:|test result" "$log" || true
    rm -f "$log"
done
if ((failed)); then
    echo "imap-diff: differences found (see above)" >&2
    exit 1
fi
echo "imap-diff: no unexplained difference for seeds $first..$last"
