# Sourced by tests/integration/run (bash, inside a network namespace with only `lo`): a DNS
# server that forges, truncates and mis-answers, for tests/integration/dns_forge_spec.lua
# (tests/integration/forge_dns.py says what each zone does). It makes its keys and signed
# messages, then listens on 127.0.0.1:15354 (UDP and TCP). The PID goes into SERVER_PIDS; a
# failure is put in DMARC_TEST_FORGE_ERROR, which the spec reports.

export DMARC_TEST_FORGE_ERROR=""
export DMARC_TEST_FORGE_DATA="$WORK/forge"

forge_setup() {
    dir=$DMARC_TEST_FORGE_DATA
    mkdir -p "$dir" || return 1
    # Debian's python3 (python3-dnspython, python3-dkim), not whatever comes first on PATH.
    /usr/bin/python3 tests/integration/forge_dns.py "$dir" 15354 >"$dir/server.log" 2>&1 &
    SERVER_PIDS="$SERVER_PIDS $!"
    tries=300
    while [ $tries -gt 0 ]; do
        if [ -e "$dir/ready" ]; then
            export DMARC_TEST_FORGE_DNS="127.0.0.1:15354"
            return 0
        fi
        sleep 0.1
        tries=$((tries - 1))
    done
    DMARC_TEST_FORGE_ERROR="forge_dns.py did not start: $(tail -1 "$dir/server.log")"
    return 0
}

forge_setup
export DMARC_TEST_FORGE_ERROR
