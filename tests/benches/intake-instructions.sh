#!/bin/bash
# Instructions per delivery, thread by thread, of `berth serve` taking signed
# `issue_comment` deliveries that each queue a task: valgrind's callgrind
# counts instructions, not seconds, so two builds can be compared to the
# instruction whatever else the machine is doing (the webhook bench's CPU
# figures move by several µs from run to run). Not a measure of time: under
# valgrind sha2 takes its portable path (no SHA-NI), and cache misses, lock
# waits and system calls are not counted.
#
# usage: tests/benches/intake-instructions.sh BERTH_BINARY [DELIVERIES] [CONNECTIONS]
# needs: valgrind, openssl, python3. Prints one line per thread that ran:
# its name, instructions, and instructions per delivery.
set -euo pipefail
bin=$(realpath "$1"); deliveries=${2:-3000}; connections=${3:-32}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); daemon=; trap '[ -n "$daemon" ] && kill "$daemon" 2>/dev/null; rm -rf "$work"' EXIT
openssl genrsa -out "$work/key.pem" 2048 2>/dev/null
port=$((20000 + RANDOM % 20000))
env -i PATH="$PATH" BERTH_LOG_FORMAT=json BERTH_BIND="127.0.0.1:$port" RUST_LOG=info \
  BERTH_WEBHOOK_SECRET=bench-webhook-secret BERTH_GITHUB_APP_ID=1 \
  BERTH_GITHUB_PRIVATE_KEY_FILE="$work/key.pem" BERTH_STATE_DIR="$work/state" \
  BERTH_GITHUB_API_URL=http://127.0.0.1:9 BERTH_WORKER_IMAGE=berth-bench-no-such-image:none \
  DOCKER_HOST="unix://$work/no-docker.sock" \
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/out.%p" \
  "$bin" serve 2>"$work/log" >/dev/null &
daemon=$!
for _ in $(seq 1 600); do grep -q '"listening"' "$work/log" 2>/dev/null && break; sleep 0.1; done
grep -q '"listening"' "$work/log" || { echo "berth did not start:"; cat "$work/log"; exit 1; }
# A warm-up not counted, then the deliveries counted, then time for a fold.
python3 "$here/intake-deliveries.py" "127.0.0.1:$port" 300 "$connections" 1 >/dev/null
callgrind_control -z "$daemon" >/dev/null 2>&1
python3 "$here/intake-deliveries.py" "127.0.0.1:$port" "$deliveries" "$connections" 100000
sleep 2.5
callgrind_control -d "$daemon" >/dev/null 2>&1
kill -INT "$daemon"; wait "$daemon" 2>/dev/null || true
for file in "$work"/out.*.1-*; do
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
  [ "${total:-0}" -gt 1000000 ] || continue
  name=$( (callgrind_annotate --inclusive=yes --threshold=100 "$file" 2>/dev/null || true) \
    | grep -oE 'journal::fold_loop|journal::Writer::run|multi_thread::worker::run' \
    | head -1 || true)
  case $name in
    journal::fold_loop) name="journal fold" ;;
    journal::Writer::run) name="journal writer" ;;
    multi_thread::worker::run) name="runtime worker" ;;
    *) name="other" ;;
  esac
  printf '%-16s %14d instructions %10d per delivery\n' "$name" "$total" $((total / deliveries))
done
