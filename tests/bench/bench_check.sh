#!/bin/sh
# tests/bench/bench_check.sh: a full `dmarc check` of an 8 KB message with one RSA-2048
# signature against libopendkim's verify alone on the same message (perf.md: the wrapper
# should add little). The message is signed here with python3-dkim and the bundled test key
# (examples/keys), whose public half is in examples/example.zone; DNS comes from that zone,
# through the cache. Prints the C comparison (bench_check.c), then the same check through the
# Lua command path (bench_check.lua) on each runtime named in DMARC_LUA (default: lua5.4
# and luajit, where built). Needs `make` first. BENCH_RUNS, BENCH_RUN_MS tune it.
set -eu
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
out=$BUILD/bench
mkdir -p "$out"
[ -f "$BUILD/libdmarc.a" ] || make --no-print-directory lib

/usr/bin/python3 - "$out/check_8k.eml" <<'EOF'
import sys
import dkim
lines = ['Received: from mx.example.com (mx.example.com [192.0.2.10])',
         '\tby mx.example.org with ESMTPS id 4Xb2; Sun, 22 Nov 2026 09:00:01 +0000',
         'From: Example News <news@example.com>', 'To: reader@example.org',
         'Cc: archive@example.org', 'Subject: This month at Example',
         'Date: Sun, 22 Nov 2026 09:00:00 +0000', 'Message-ID: <bench-8k@example.com>',
         'MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8',
         'Content-Transfer-Encoding: 8bit',
         'List-Unsubscribe: <mailto:unsubscribe@example.com>']
body = []
n = 0
while sum(len(b) + 2 for b in body) < 8192 - 80:
    n += 1
    body.append('Line %03d of the newsletter body, long enough to look like prose text.' % n)
msg = ('\r\n'.join(lines) + '\r\n\r\n' + '\r\n'.join(body) + '\r\n').encode()
key = open('examples/keys/rsa-2048.test.pem', 'rb').read()
sig = dkim.sign(msg, b'sel2026', b'example.com', key, canonicalize=(b'relaxed', b'relaxed'),
                include_headers=[b'from', b'to', b'cc', b'subject', b'date', b'message-id',
                                 b'mime-version', b'content-type',
                                 b'content-transfer-encoding', b'list-unsubscribe'])
open(sys.argv[1], 'wb').write(sig + msg)
EOF

WARN="-Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
-Wwrite-strings -Wcast-qual -Wformat=2 -Wundef -Wvla -Werror"
# shellcheck disable=SC2086,SC2046
$CC -O2 -g -std=c99 -D_POSIX_C_SOURCE=200809L $WARN -Icore/include -Icore/src -Iadapters/include \
    -o "$out/bench_check" tests/bench/bench_check.c adapters/src/dns.c adapters/src/zone.c \
    adapters/src/spf.c adapters/src/dkim.c "$BUILD/libdmarc.a" -lspf2 -lopendkim \
    $($PKG_CONFIG --libs libpsl libidn2)
"$out/bench_check" "$out/check_8k.eml" examples/example.zone 192.0.2.10 news@example.com
for rt in ${DMARC_LUA:-lua5.4 luajit}; do
    if command -v "$rt" >/dev/null 2>&1 && [ -d "$BUILD/$rt/dmarc" ]; then
        echo
        "$rt" tests/bench/bench_check.lua "$out/check_8k.eml"
    fi
done
