#!/usr/bin/env bash
# Runs the Azurite blob emulator for the tests: installs it if missing,
# starts it in the background, reports whether it runs, and stops it.
#
#   scripts/azurite.sh install|start|stop|status
#
# Environment:
#   BLOBCACHE_TOOLS_DIR     where tools are installed (default ~/.cache/blobcache-tools)
#   BLOBCACHE_AZURITE_PORT  blob port (default 10000)
#
# Azurite is installed into $BLOBCACHE_TOOLS_DIR/azurite; its pid file, log
# and data live in the same directory, so that `stop` finds what `start`
# started, and the data of one run never leaks into the next.
set -euo pipefail

AZURITE_VERSION=3.35.0
TOOLS_DIR=${BLOBCACHE_TOOLS_DIR:-${HOME:-/root}/.cache/blobcache-tools}
AZ_DIR=$TOOLS_DIR/azurite
HOST=127.0.0.1
PORT=${BLOBCACHE_AZURITE_PORT:-10000}
PID_FILE=$AZ_DIR/azurite-$PORT.pid
LOG_FILE=$AZ_DIR/azurite-$PORT.log
DATA_DIR=$AZ_DIR/data-$PORT
ENDPOINT=http://$HOST:$PORT/devstoreaccount1
# Azurite answers after ~2 s; a loaded CI machine gets much more slack.
START_TIMEOUT_S=30

log() { printf 'azurite: %s\n' "$*" >&2; }

installed_version() {
    node -p "require('$AZ_DIR/node_modules/azurite/package.json').version" 2>/dev/null || true
}

install() {
    if [[ "$(installed_version)" == "$AZURITE_VERSION" ]]; then
        return 0
    fi
    command -v npm >/dev/null || { log "npm not found: install Node.js 20 and npm"; exit 1; }
    log "installing azurite@$AZURITE_VERSION into $AZ_DIR"
    mkdir -p "$AZ_DIR"
    # A package.json of our own keeps npm from walking up to some parent project.
    [[ -f "$AZ_DIR/package.json" ]] || echo '{"private": true}' >"$AZ_DIR/package.json"
    npm install --prefix "$AZ_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
    [[ "$(installed_version)" == "$AZURITE_VERSION" ]] || { log "installation failed"; exit 1; }
}

# Prints the Server header of whatever answers HTTP on the port; fails if
# nothing answers. Node is used because curl may be missing on a fresh machine.
probe() {
    node -e '
        const req = require("http").get(
            { host: process.argv[1], port: Number(process.argv[2]),
              path: "/devstoreaccount1?comp=list", timeout: 2000 },
            (res) => { console.log(res.headers.server || "unknown"); process.exit(0); });
        req.on("timeout", () => { req.destroy(); process.exit(1); });
        req.on("error", () => process.exit(1));
    ' "$HOST" "$PORT" 2>/dev/null
}

our_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    # The pid must still be an Azurite process: pids get reused.
    [[ -n "$pid" ]] && grep -qa azurite "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

start() {
    if our_pid >/dev/null && probe >/dev/null; then
        log "already running (pid $(our_pid))"
        echo "$ENDPOINT"
        return 0
    fi
    local server
    if server=$(probe); then
        if [[ "$server" == Azurite* ]]; then
            log "an Azurite not started by this script answers on port $PORT ($server); using it"
            echo "$ENDPOINT"
            return 0
        fi
        log "port $PORT is taken by another server ($server); set BLOBCACHE_AZURITE_PORT"
        exit 1
    fi
    install
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    # --loose: ranged reads under 4 MiB would otherwise fail on the CRC64 header.
    # --skipApiVersionCheck: the SDK may speak a newer API version than Azurite.
    # --disableTelemetry: no lookups of a telemetry host from CI.
    setsid nohup node "$AZ_DIR/node_modules/azurite/dist/src/blob/main.js" \
        --blobHost "$HOST" --blobPort "$PORT" --location "$DATA_DIR" \
        --skipApiVersionCheck --loose --disableTelemetry \
        </dev/null >"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until probe >/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "exited during start-up; log $LOG_FILE:"
            tail -n 20 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "no answer on port $PORT after ${START_TIMEOUT_S}s; log $LOG_FILE:"
            tail -n 20 "$LOG_FILE" >&2 || true
            stop
            exit 1
        fi
        sleep 0.3
    done
    log "started (pid $pid, log $LOG_FILE)"
    echo "$ENDPOINT"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
    rm -rf "$DATA_DIR"
    log "stopped (pid $pid)"
}

status() {
    local pid
    if pid=$(our_pid) && probe >/dev/null; then
        echo "running (pid $pid) at $ENDPOINT"
        return 0
    fi
    echo "not running"
    return 3
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 install|start|stop|status" >&2
    exit 2
    ;;
esac
