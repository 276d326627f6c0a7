#!/bin/sh
# Ingest benchmark: starts a throwaway redis-server on a loopback port, runs
# tests/bench/ingest_bench.lua (ingest throughput for 10,000 reports of 100
# records; one large report of 200,000 and of 1,000,000 records, as XML and as
# .xml.gz, each with its peak RSS; summary latency over 30 days of 1,000 domains), stops the server by
# PID. Environment: INGEST_BENCH_PORT, INGEST_BENCH_REPORTS, INGEST_BENCH_RECORDS,
# INGEST_BENCH_LARGE, INGEST_BENCH_DOMAINS, INGEST_BENCH_DAYS, LUA (lua5.4 or luajit).
set -eu
cd "$(dirname "$0")/../.."
PORT=${INGEST_BENCH_PORT:-16397}
LUA=${LUA:-lua5.4}
[ -f build/$LUA/dmarc/xml.so ] || make --no-print-directory lua >/dev/null
dir=$(mktemp -d /tmp/dmarc-ingest-bench.XXXXXX)
redis-server --bind 127.0.0.1 --port "$PORT" --dir "$dir" --save '' --appendonly no \
    --daemonize no --logfile "$dir/redis.log" &
pid=$!
# Stop the server by PID and keep the benchmark's own exit status (under set -e a
# `wait` on the killed server would otherwise end the trap early).
cleanup() {
    status=$?
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
    [ $i -lt 100 ] || { echo "ingest bench: redis-server did not start" >&2; exit 1; }
    sleep 0.1
done
"$LUA" tests/bench/ingest_bench.lua "$PORT" ingest "${INGEST_BENCH_REPORTS:-10000}" \
    "${INGEST_BENCH_RECORDS:-100}" 1000
# One large report in a fresh process each: the largest the defaults allow
# (200,000 records, under 64 MiB) and 1,000,000 records under raised limits.
for n in ${INGEST_BENCH_LARGE:-200000 1000000}; do
    "$LUA" tests/bench/ingest_bench.lua "$PORT" write-large "$n" "$dir/large.xml"
    "$LUA" tests/bench/ingest_bench.lua "$PORT" large "$dir/large.xml" "$n"
    gzip -n -6 "$dir/large.xml"
    "$LUA" tests/bench/ingest_bench.lua "$PORT" large "$dir/large.xml.gz" "$n"
    rm -f "$dir/large.xml.gz"
done
"$LUA" tests/bench/ingest_bench.lua "$PORT" summary "${INGEST_BENCH_DOMAINS:-1000}" \
    "${INGEST_BENCH_DAYS:-30}" 100
