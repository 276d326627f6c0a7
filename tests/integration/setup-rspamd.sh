# Sourced by tests/integration/run (bash, inside a network namespace with only `lo`, after
# redis-server is up): start our own unbound with the rspamd test zone, sign the message
# corpus, and start real rspamd 3.4 instances on loopback for tests/integration/rspamd_spec.lua:
#
#   builtin  127.0.0.1:11433  rspamd's own dmarc module (the reference the harness is
#                             proven with, and what the plugin must stay compatible with)
#   engine   127.0.0.1:11443  our plugin, the default site script (RFC 9989 §7.4 treatment)
#   strict   127.0.0.1:11453  our plugin, the site script with the one-line reject switch,
#                             a Redis that is down
#   legacy   127.0.0.1:11463  our plugin in rfc7489 mode, DKIM checked by the engine
#                             (rspamd's dkim filter not loaded)
#   broken   127.0.0.1:11473  our plugin with a site script that does not load
#   sandbox  127.0.0.1:11483  our plugin with a site hook the sandbox must stop, and its
#                             dmarc= entry in milter_headers' Authentication-Results field
#
# A failure here does not stop the other suites: it is recorded in DMARC_TEST_RSPAMD_ERROR
# and rspamd_spec.lua reports it as a failed test. Every daemon's PID is in SERVER_PIDS.

export DMARC_TEST_RSPAMD_ERROR=""
export RSPAMD_IT_DIR="$WORK/rspamd"
export RSPAMD_IT_REDIS="${DMARC_TEST_REDIS:-127.0.0.1:16379}"
# The rspamd workers run as _rspamd and must reach their directory under $WORK.
chmod 711 "$WORK"

. tests/integration/rspamd/lib.sh

rspamd_it_setup() {
    rspamd_it_prepare || {
        DMARC_TEST_RSPAMD_ERROR="DNS server or corpus setup failed"
        return 0
    }
    export DMARC_TEST_RSPAMD_CORPUS="$RSPAMD_IT_DIR/corpus"
    export DMARC_TEST_RSPAMD_DNS="127.0.0.1:$RSPAMD_IT_DNS_PORT"

    # The first instance fills the compiled-PSL cache the others then reuse.
    if rspamd_it_conf builtin 11433 builtin && rspamd_it_start builtin 11433; then
        export DMARC_TEST_RSPAMD_BUILTIN=127.0.0.1:11433
    else
        DMARC_TEST_RSPAMD_ERROR="rspamd with the built-in dmarc module did not start"
        return 0
    fi

    if [ ! -f plugins/rspamd/dmarc_engine.lua ]; then
        DMARC_TEST_RSPAMD_ERROR="plugins/rspamd/dmarc_engine.lua is missing"
        return 0
    fi
    if rspamd_it_conf engine 11443 engine "$RSPAMD_IT_SRC/engine.conf.in" &&
        cp "$RSPAMD_IT_SRC/site-default.lua" "$RSPAMD_IT_DIR/engine/site.lua" &&
        rspamd_it_start engine 11443; then
        export DMARC_TEST_RSPAMD_ENGINE=127.0.0.1:11443
    else
        DMARC_TEST_RSPAMD_ERROR="rspamd with the dmarc_engine plugin did not start"
        return 0
    fi
    if rspamd_it_conf strict 11453 engine "$RSPAMD_IT_SRC/strict.conf.in" &&
        cp "$RSPAMD_IT_SRC/site-strict.lua" "$RSPAMD_IT_DIR/strict/site.lua" &&
        rspamd_it_start strict 11453; then
        export DMARC_TEST_RSPAMD_STRICT=127.0.0.1:11453
    else
        DMARC_TEST_RSPAMD_ERROR="rspamd with the dmarc_engine plugin (strict site) did not start"
        return 0
    fi
    if RSPAMD_IT_FILTERS="" rspamd_it_conf legacy 11463 engine "$RSPAMD_IT_SRC/legacy.conf.in" &&
        rspamd_it_start legacy 11463; then
        export DMARC_TEST_RSPAMD_LEGACY=127.0.0.1:11463
    else
        DMARC_TEST_RSPAMD_ERROR="rspamd with the dmarc_engine plugin (rfc7489 mode) did not start"
        return 0
    fi
    if rspamd_it_conf broken 11473 engine "$RSPAMD_IT_SRC/broken.conf.in" &&
        cp "$RSPAMD_IT_SRC/site-broken.lua.in" "$RSPAMD_IT_DIR/broken/site.lua" &&
        rspamd_it_start broken 11473; then
        export DMARC_TEST_RSPAMD_BROKEN=127.0.0.1:11473
    else
        DMARC_TEST_RSPAMD_ERROR="rspamd with the dmarc_engine plugin (broken site script) did not start"
        return 0
    fi
    if rspamd_it_conf sandbox 11483 engine "$RSPAMD_IT_SRC/sandbox.conf.in" &&
        cp "$RSPAMD_IT_SRC/site-sandbox.lua" "$RSPAMD_IT_DIR/sandbox/site.lua" &&
        rspamd_it_start sandbox 11483; then
        export DMARC_TEST_RSPAMD_SANDBOX=127.0.0.1:11483
    else
        DMARC_TEST_RSPAMD_ERROR="rspamd with the dmarc_engine plugin (sandbox) did not start"
    fi
    return 0
}

rspamd_it_setup
export DMARC_TEST_RSPAMD_ERROR
