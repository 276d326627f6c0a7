# Shell helpers for running a real rspamd 3.4 on loopback: test keys, a DNS zone served by
# our own unbound, a signed message corpus and rspamd instances with a minimal config.
# Sourced (bash) by tests/integration/setup-rspamd.sh and tests/bench/rspamd_bench. Every
# daemon is started in the foreground in the background of the caller, its PID appended to
# SERVER_PIDS (tests/integration/servers.sh stops them by PID); nothing here kills by name.
#
# Everything must already run inside a network namespace that has only `lo`: rspamd
# resolves some names (fuzzy servers) with the system resolver, which points off the host.
#
# Variables read: RSPAMD_IT_ROOT (the repository), RSPAMD_IT_DIR (scratch directory, made
# readable by the _rspamd user), RSPAMD_IT_DNS_PORT (unbound, default 15354).

RSPAMD_IT_ROOT=${RSPAMD_IT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
RSPAMD_IT_SRC=$RSPAMD_IT_ROOT/tests/integration/rspamd
RSPAMD_IT_DNS_PORT=${RSPAMD_IT_DNS_PORT:-15354}
# Debian's python3: another python3 earlier on PATH may lack the `dkim` module.
RSPAMD_IT_PYTHON=${RSPAMD_IT_PYTHON:-/usr/bin/python3}
# Startup budget: the first start compiles the public suffix list (~20-30 s) unless the
# hyperscan/PSL cache directory already holds it.
RSPAMD_IT_START_TRIES=${RSPAMD_IT_START_TRIES:-900}

rspamd_it_log() { echo "rspamd-it: $*" >&2; }

# rspamd_it_keys DIR: one RSA-2048 key per signing identity (selector.domain), generated
# for this run only. Writes DIR/<selector>.<domain>.pem and DIR/<selector>.<domain>.p (the
# base64 public key for the TXT record).
rspamd_it_keys() {
    dir=$1
    mkdir -p "$dir"
    for ident in sel1.pass.test sel1.reject.test sel1.override.test arc1.forwarder.test \
        sel1.bench.test sel1.ruf.test; do
        [ -s "$dir/$ident.pem" ] && continue
        openssl genrsa -traditional -out "$dir/$ident.pem" 2048 2>/dev/null || return 1
        openssl rsa -in "$dir/$ident.pem" -pubout -outform DER 2>/dev/null |
            base64 -w0 >"$dir/$ident.p" || return 1
    done
}

# rspamd_it_dkim_rr KEYDIR IDENT: the DKIM key record as unbound local-data strings, split
# into character-strings of at most 250 bytes (one TXT string holds 255).
rspamd_it_dkim_rr() {
    p="v=DKIM1; k=rsa; p=$(cat "$1/$2.p")"
    out=""
    while [ -n "$p" ]; do
        out="$out \"${p:0:250}\""
        p=${p:250}
    done
    echo "${out# }"
}

# rspamd_it_unbound_conf DIR KEYDIR: write DIR/unbound.conf from zone.conf.in, with the
# keys of this run. Nothing is ever forwarded off the host: `local-zone: "." static`.
rspamd_it_unbound_conf() {
    dir=$1 keys=$2
    mkdir -p "$dir"
    {
        cat <<EOF
server:
    interface: 127.0.0.1
    port: $RSPAMD_IT_DNS_PORT
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
EOF
        while IFS= read -r line; do
            case $line in
            *@DKIM:*@*)
                ident=${line#*@DKIM:}
                ident=${ident%%@*}
                rr=$(rspamd_it_dkim_rr "$keys" "$ident")
                echo "${line%%@DKIM:*}${rr}${line#*@DKIM:"$ident"@}"
                ;;
            *) echo "$line" ;;
            esac
        done <"$RSPAMD_IT_SRC/zone.conf.in"
    } >"$dir/unbound.conf"
}

# rspamd_it_start_unbound DIR: start unbound on 127.0.0.1:$RSPAMD_IT_DNS_PORT, wait until it
# answers.
rspamd_it_start_unbound() {
    dir=$1
    # (checkconf warns that the SERVFAIL zone's loopback forwarder is never queried: that
    # is the point, unbound then answers SERVFAIL at once.)
    unbound-checkconf "$dir/unbound.conf" >"$dir/checkconf.log" 2>&1 || {
        cat "$dir/checkconf.log" >&2
        return 1
    }
    unbound -d -c "$dir/unbound.conf" >"$dir/unbound.log" 2>&1 &
    SERVER_PIDS="$SERVER_PIDS $!"
    echo $! >"$dir/unbound.pid"
    tries=100
    while [ $tries -gt 0 ]; do
        if dig +short +time=1 +tries=1 -p "$RSPAMD_IT_DNS_PORT" @127.0.0.1 \
            _dmarc.pass.test TXT 2>/dev/null | grep -q DMARC1; then
            return 0
        fi
        sleep 0.1
        tries=$((tries - 1))
    done
    rspamd_it_log "unbound does not answer on port $RSPAMD_IT_DNS_PORT"
    return 1
}

# rspamd_it_corpus OUTDIR KEYDIR: copy the corpus templates with CRLF line ends, then sign
# the messages that ask for it (a "X-Test-Sign: selector.domain" header, removed before
# signing; "X-Test-Arc: selector.domain" seals an ARC set after signing and after the
# message was changed as a forwarder would).
rspamd_it_corpus() {
    out=$1 keys=$2
    mkdir -p "$out"
    "$RSPAMD_IT_PYTHON" "$RSPAMD_IT_SRC/sign.py" corpus "$RSPAMD_IT_SRC/corpus" "$out" "$keys"
}

# rspamd_it_conf NAME PORT DMARC_MODULE [EXTRA_FILE]: render an rspamd config for one
# instance into $RSPAMD_IT_DIR/NAME/. DMARC_MODULE is `builtin` (rspamd's own dmarc
# module), `engine` (ours) or `none`. EXTRA_FILE, when given, is appended (plugin options);
# a line "# rspamd_it lua plugins: NAME..." in it names rspamd's Lua plugins the instance
# loads besides the DMARC module (default: spf arc).
# RSPAMD_IT_FILTERS: rspamd's C filters (default "dkim"; empty: rspamd checks no DKIM).
rspamd_it_conf() {
    name=$1 port=$2 dmarc=$3 extra=${4:-}
    d=$RSPAMD_IT_DIR/$name
    mkdir -p "$d/plugins" "$d/db" "$d/run" "$d/log"
    plugins="spf arc"
    if [ -n "$extra" ] && grep -q '^# rspamd_it lua plugins:' "$extra"; then
        plugins=$(sed -n 's/^# rspamd_it lua plugins: *//p' "$extra" | head -n 1)
    fi
    # Only the Lua plugins under test are visible: SPF, ARC and one DMARC module.
    for p in $plugins; do ln -sf "/usr/share/rspamd/plugins/$p.lua" "$d/plugins/$p.lua"; done
    builtin=false
    case $dmarc in
    builtin)
        ln -sf /usr/share/rspamd/plugins/dmarc.lua "$d/plugins/dmarc.lua"
        builtin=true
        ;;
    engine)
        # The plugin and its parts, as installed (plugins/rspamd/README.md). RSPAMD_IT_PLUGIN:
        # an installed plugin (tests/packages/run), which then loads the installed engine from
        # rspamd's default Lua paths, not the source tree's.
        plugin=${RSPAMD_IT_PLUGIN:-$RSPAMD_IT_ROOT/plugins/rspamd/dmarc_engine.lua}
        ln -sf "$plugin" "$d/plugins/dmarc_engine.lua"
        ln -sfn "${plugin%.lua}" "$d/plugins/dmarc_engine"
        ;;
    none) ;;
    *)
        rspamd_it_log "unknown DMARC module $dmarc"
        return 1
        ;;
    esac
    sed -e "s|@DIR@|$d|g" -e "s|@CACHE@|$RSPAMD_IT_CACHE|g" -e "s|@PORT@|$port|g" \
        -e "s|@DNS_PORT@|$RSPAMD_IT_DNS_PORT|g" -e "s|@REDIS@|$RSPAMD_IT_REDIS|g" \
        -e "s|@WORKERS@|${RSPAMD_IT_WORKERS:-1}|g" -e "s|@LOGLEVEL@|${RSPAMD_IT_LOGLEVEL:-info}|g" \
        -e "s|@BUILTIN@|$builtin|g" -e "s|@FILTERS@|${RSPAMD_IT_FILTERS-dkim}|g" \
        "$RSPAMD_IT_SRC/rspamd.conf.in" >"$d/rspamd.conf"
    if [ -n "$extra" ]; then
        sed -e "${RSPAMD_IT_PLUGIN:+/^ *lua_c*path = \"@ROOT@/d}" \
            -e "s|@ROOT@|$RSPAMD_IT_ROOT|g" -e "s|@DIR@|$d|g" -e "s|@SRC@|$RSPAMD_IT_SRC|g" \
            -e "s|@REDIS@|$RSPAMD_IT_REDIS|g" -e "s|@NAME@|$name|g" "$extra" >>"$d/rspamd.conf"
    fi
    chown -R _rspamd:_rspamd "$d/db" "$d/run" "$d/log"
}

# rspamd_it_start NAME PORT: start the instance rendered by rspamd_it_conf, in the
# foreground (`rspamd -f` writes no pidfile, so $! is the main process), and wait until its
# normal worker answers /ping. On failure the log tail is printed.
rspamd_it_start() {
    name=$1 port=$2
    d=$RSPAMD_IT_DIR/$name
    # With an installed plugin, nothing from the source tree may be on its Lua paths.
    env ${RSPAMD_IT_PLUGIN:+-u LUA_PATH -u LUA_CPATH} \
        rspamd -f -u _rspamd -g _rspamd -c "$d/rspamd.conf" >"$d/log/stdout.log" 2>&1 &
    pid=$!
    SERVER_PIDS="$SERVER_PIDS $pid"
    echo "$pid" >"$d/main.pid"
    tries=$RSPAMD_IT_START_TRIES
    while [ "$tries" -gt 0 ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rspamd_it_log "rspamd $name exited during startup"
            tail -n 30 "$d/log/stdout.log" "$d/log/rspamd.log" >&2 2>/dev/null
            return 1
        fi
        if [ "$(rspamd_it_http_get 127.0.0.1 "$port" /ping)" = "pong" ]; then
            return 0
        fi
        sleep 0.1
        tries=$((tries - 1))
    done
    rspamd_it_log "rspamd $name does not answer on port $port"
    tail -n 30 "$d/log/rspamd.log" >&2 2>/dev/null
    return 1
}

# rspamd_it_http_get HOST PORT PATH: body of a plain HTTP/1.0 GET (bash /dev/tcp, so no
# HTTP client is needed).
rspamd_it_http_get() {
    (
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf 'GET %s HTTP/1.0\r\n\r\n' "$3" >&3
        sed -e '1,/^\r\{0,1\}$/d' <&3
    ) 2>/dev/null | tr -d '\r\n'
}

# rspamd_it_prepare: keys, zone, unbound and corpus under $RSPAMD_IT_DIR (idempotent).
rspamd_it_prepare() {
    mkdir -p "$RSPAMD_IT_DIR"
    chmod 755 "$RSPAMD_IT_DIR"
    rspamd_it_keys "$RSPAMD_IT_DIR/keys" || return 1
    rspamd_it_unbound_conf "$RSPAMD_IT_DIR/unbound" "$RSPAMD_IT_DIR/keys" || return 1
    rspamd_it_start_unbound "$RSPAMD_IT_DIR/unbound" || return 1
    rspamd_it_corpus "$RSPAMD_IT_DIR/corpus" "$RSPAMD_IT_DIR/keys" || return 1
    # Compiled hyperscan and PSL data survive between runs here (first start ~30 s).
    RSPAMD_IT_CACHE=${RSPAMD_IT_CACHE:-$RSPAMD_IT_ROOT/build/rspamd-cache}
    mkdir -p "$RSPAMD_IT_CACHE"
    chown _rspamd:_rspamd "$RSPAMD_IT_CACHE"
}
