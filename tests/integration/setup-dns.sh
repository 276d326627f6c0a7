# Sourced by tests/integration/run (bash, inside a network namespace with only `lo`): a real
# DNS server for tests/integration/dns_spec.lua. unbound answers on 127.0.0.1:15353 from
# local data made fresh for this run (keys, SPF, DKIM and DMARC records; messages signed with
# python3-dkim), and never asks anyone else (`local-zone: "." static`). Three zones fail on
# purpose:
#   servfail.test  forwarded to a loopback port unbound will not query: SERVFAIL at once
#   timeout.test   `deny`: queries are dropped, the client times out
#   refused.test   `refuse`: REFUSED, a server error like SERVFAIL
# The PID goes into SERVER_PIDS (stopped by the runner). A failure here does not stop the
# other suites: it is put in DMARC_TEST_DNS_ERROR, which dns_spec.lua reports as a failure.

export DMARC_TEST_DNS_ERROR=""
export DMARC_TEST_DNS_PORT=15353
export DMARC_TEST_DNS_DATA="$WORK/dns"

dns_it_conf() {
    dir=$1
    cat <<EOF
server:
    interface: 127.0.0.1
    port: $DMARC_TEST_DNS_PORT
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$dir"
    pidfile: ""
    logfile: ""
    use-syslog: no
    verbosity: 1
    log-queries: yes
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    local-zone: "." static
    local-zone: "servfail.test." transparent
    local-zone: "timeout.test." deny
    local-zone: "refused.test." refuse
    include: "$dir/zone.conf"

forward-zone:
    name: "servfail.test."
    forward-addr: 127.0.0.1@1
EOF
}

dns_it_setup() {
    dir=$DMARC_TEST_DNS_DATA
    mkdir -p "$dir" || return 1
    # Debian's python3 (python3-dkim), not whatever python3 comes first on PATH.
    /usr/bin/python3 tests/integration/data/make_dns_data.py "$dir" >"$dir/make.log" 2>&1 || {
        DMARC_TEST_DNS_ERROR="signing the test messages failed: $(tail -1 "$dir/make.log")"
        return 0
    }
    dns_it_conf "$dir" >"$dir/unbound.conf"
    unbound-checkconf "$dir/unbound.conf" >"$dir/checkconf.log" 2>&1 || {
        DMARC_TEST_DNS_ERROR="unbound.conf does not check: $(tail -1 "$dir/checkconf.log")"
        return 0
    }
    unbound -d -c "$dir/unbound.conf" >"$dir/unbound.log" 2>&1 &
    SERVER_PIDS="$SERVER_PIDS $!"
    tries=100
    while [ $tries -gt 0 ]; do
        if dig +short +time=1 +tries=1 -p "$DMARC_TEST_DNS_PORT" @127.0.0.1 \
            _dmarc.sender.test TXT 2>/dev/null | grep -q DMARC1; then
            export DMARC_TEST_DNS="127.0.0.1:$DMARC_TEST_DNS_PORT"
            return 0
        fi
        sleep 0.1
        tries=$((tries - 1))
    done
    DMARC_TEST_DNS_ERROR="unbound does not answer on port $DMARC_TEST_DNS_PORT"
    return 0
}

dns_it_setup
export DMARC_TEST_DNS_ERROR
