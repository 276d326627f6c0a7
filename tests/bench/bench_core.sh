#!/bin/sh
# tests/bench/bench_core.sh [--quick]: build the benchmark against $BUILD/libdmarc.a (made by
# `make lib`) and libopendmarc, then run it. tests/bench/run calls this script.
# BENCH_RUNS and BENCH_RUN_MS tune the timing (see tests/bench/bench_record.c).
set -eu
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
CC=${CC:-cc}
PKG_CONFIG=${PKG_CONFIG:-pkg-config}
out=$BUILD/bench

if [ ! -f /usr/include/opendmarc/dmarc.h ]; then
    echo "bench: libopendmarc-dev is not installed (the peer to compare with)" >&2
    exit 1
fi
[ -f "$BUILD/libdmarc.a" ] || make --no-print-directory lib

WARN="-Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
-Wwrite-strings -Wcast-qual -Wformat=2 -Wundef -Wvla -Werror"
mkdir -p "$out"
# Our side: the project's C99 and warning set.
$CC -O2 -g -std=c99 -D_POSIX_C_SOURCE=200809L $WARN -Icore/include -Iadapters/include \
    -c tests/bench/bench_record.c -o "$out/bench_record.o"
# The peer: libopendmarc's header needs BSD types (u_char) and takes non-const strings.
$CC -O2 -g -std=gnu99 -Wall -Wextra -Werror -c tests/bench/opendmarc_peer.c \
    -o "$out/opendmarc_peer.o"
$CC -o "$out/bench_record" "$out/bench_record.o" "$out/opendmarc_peer.o" "$BUILD/libdmarc.a" \
    -lopendmarc $($PKG_CONFIG --libs libpsl libidn2)
exec "$out/bench_record" "$@"
