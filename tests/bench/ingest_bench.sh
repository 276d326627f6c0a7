#!/bin/sh
# Ingest benchmark: starts a throwaway redis-server on a loopback port, runs
# tests/bench/ingest_bench.lua (ingest throughput for 10,000 reports of 100
# records; one large report of 200,000 and of 1,000,000 records in each form: XML
# file, standard input, .xml.gz, gzip inside gzip, .zip, an e-mail with the .xml.gz
# attached, that e-mail in an mbox, each with its peak RSS; summary latency over 30
# days of 1,000 domains), stops the server by PID. Environment: INGEST_BENCH_PORT, INGEST_BENCH_REPORTS, INGEST_BENCH_RECORDS,
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
# One large report in a fresh process each, in every form it may arrive in: the largest
# the defaults allow (200,000 records, under 64 MiB) and 1,000,000 records under raised
# limits; each line gives records/s beside the process's peak RSS.
large() { # FILE RECORDS XML_BYTES FORM [STDIN]
    if [ -n "${5:-}" ]; then
        "$LUA" tests/bench/ingest_bench.lua "$PORT" large - "$2" "$3" "$4" < "$5"
    else
        "$LUA" tests/bench/ingest_bench.lua "$PORT" large "$1" "$2" "$3" "$4"
    fi
}
email() { # ATTACHMENT NAME TYPE > MESSAGE (base64, CRLF lines)
    printf 'From: reports@example.net\r\nTo: dmarc@example.com\r\nSubject: Report\r\n'
    printf 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XyZ"\r\n\r\n'
    printf -- '--XyZ\r\nContent-Type: %s; name="%s"\r\n' "$3" "$2"
    printf 'Content-Transfer-Encoding: base64\r\n\r\n'
    base64 -w 76 "$1" | sed 's/$/\r/'
    printf -- '--XyZ--\r\n'
}
for n in ${INGEST_BENCH_LARGE:-200000 1000000}; do
    x="$dir/large.xml"
    "$LUA" tests/bench/ingest_bench.lua "$PORT" write-large "$n" "$x"
    bytes=$(wc -c < "$x")
    large "$x" "$n" "$bytes" 'XML file'
    large - "$n" "$bytes" 'XML on standard input' "$x"
    gzip -n -6 -c "$x" > "$x.gz"
    large "$x.gz" "$n" "$bytes" '.xml.gz file'
    gzip -n -c "$x.gz" > "$x.gz.gz"
    large "$x.gz.gz" "$n" "$bytes" 'gzip inside gzip'
    rm -f "$x.gz.gz"
    python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[2], "report.xml")' \
        "$dir/large.zip" "$x"
    large "$dir/large.zip" "$n" "$bytes" '.zip file'
    rm -f "$dir/large.zip"
    email "$x.gz" report.xml.gz application/gzip > "$dir/large.eml"
    large "$dir/large.eml" "$n" "$bytes" 'e-mail, .xml.gz attached'
    { echo "From reports@example.net Mon Dec  7 10:00:00 2026"; cat "$dir/large.eml"; } \
        > "$dir/large.mbox"
    large "$dir/large.mbox" "$n" "$bytes" 'mbox of that e-mail'
    rm -f "$dir/large.eml" "$dir/large.mbox" "$x.gz" "$x"
done
"$LUA" tests/bench/ingest_bench.lua "$PORT" summary "${INGEST_BENCH_DOMAINS:-1000}" \
    "${INGEST_BENCH_DAYS:-30}" 100
