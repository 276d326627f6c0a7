# Sourced by tests/integration/run (bash, inside a network namespace with only `lo`): a DNS
# server that forges, truncates and mis-answers, for tests/integration/dns_forge_spec.lua
# (tests/integration/forge_dns.py says what each zone does). It makes its keys and signed
# messages (a 4096-bit key takes a few seconds), then listens on 127.0.0.1:15355 (UDP and
# TCP) and creates $DMARC_TEST_FORGE_DATA/ready; the spec waits for that file, so the other
# setups go on meanwhile. The PID goes into SERVER_PIDS.

export DMARC_TEST_FORGE_DATA="$WORK/forge"
export DMARC_TEST_FORGE_DNS="127.0.0.1:15355"
mkdir -p "$DMARC_TEST_FORGE_DATA"
# Debian's python3 (python3-dnspython, python3-dkim), not whatever comes first on PATH.
/usr/bin/python3 tests/integration/forge_dns.py "$DMARC_TEST_FORGE_DATA" 15355 \
    >"$DMARC_TEST_FORGE_DATA/server.log" 2>&1 &
SERVER_PIDS="$SERVER_PIDS $!"
