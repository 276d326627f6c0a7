#!/bin/sh
# Report benchmark: starts a throwaway redis-server on a loopback port, runs
# tests/bench/report_bench.lua (row write cost with and without pipelining,
# generation of 1,000,000 rows over 10,000 policy domains), stops the server
# by PID. Arguments are passed on: [MESSAGES] [ROWS] [DOMAINS].
set -eu
cd "$(dirname "$0")/../.."
PORT=${REPORT_BENCH_PORT:-16398}
dir=$(mktemp -d /tmp/dmarc-report-bench.XXXXXX)
redis-server --bind 127.0.0.1 --port "$PORT" --dir "$dir" --save '' --appendonly no \
    --daemonize no --logfile "$dir/redis.log" &
pid=$!
# Stop the server by its PID, then remove the directory, keeping the benchmark's exit
# status. Under `set -e` a bare `wait` on the killed server returns non-zero and would end
# the trap before `rm` (leaving redis-server and the directory behind); hence `|| true`.
cleanup() {
    status=$?
    trap - EXIT
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
i=0
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "report bench: redis-server did not start" >&2; exit 1; }
    sleep 0.1
done
lua5.4 tests/bench/report_bench.lua "$PORT" write "${1:-20000}"
lua5.4 tests/bench/report_bench.lua "$PORT" seed "${2:-1000000}" "${3:-10000}"
lua5.4 tests/bench/report_bench.lua "$PORT" generate
