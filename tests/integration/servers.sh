# Helpers for tests/integration/run: start real servers on loopback, remember their PIDs,
# stop them by PID. Sourced, not executed. $WORK is the run's temporary directory.

SERVER_PIDS=""

# wait_port HOST PORT [TRIES]: wait until something accepts TCP on HOST:PORT.
wait_port() {
    tries=${3:-100}
    while [ "$tries" -gt 0 ]; do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
        tries=$((tries - 1))
    done
    echo "servers: nothing listens on $1:$2" >&2
    return 1
}

# stop_pid PID: TERM, wait up to 10 s, then KILL.
stop_pid() {
    pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
}

stop_servers() {
    for pid in $SERVER_PIDS; do stop_pid "$pid"; done
    SERVER_PIDS=""
}

# start_redis PORT: a throwaway redis-server (AOF on, so a restart keeps data).
start_redis() {
    port=$1
    dir="$WORK/redis-$port"
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --appendonly yes \
        --save '' --daemonize no --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" &
    echo $! >"$dir/pid"
    SERVER_PIDS="$SERVER_PIDS $!"
    wait_port 127.0.0.1 "$port"
}
