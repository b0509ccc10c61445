#!/bin/sh
# Azurite's Blob service, for the Blob state store's contract tests (tests/core/blob.rs).
#   start    install Azurite into .tools/node_modules (npm ci, pinned by package-lock.json) if missing, then
#            start it in the background on 127.0.0.1:10000 with in-memory storage, and wait until it answers
#   stop     stop the Azurite that `start` started (and nothing else)
#   running  exit 0 when something answers on the port
set -eu
cd "$(dirname "$0")"
HOST=127.0.0.1
PORT=${AZURITE_BLOB_PORT:-10000}
PIDFILE=azurite.pid

answers() {
  node -e "require('net').connect($PORT, '$HOST').on('connect', () => process.exit(0)).on('error', () => process.exit(1))"
}

ours() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

case "${1:-start}" in
running)
  answers
  ;;
start)
  if answers; then
    echo "azurite: already answering on $HOST:$PORT"
    exit 0
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "azurite: Node.js and npm are needed (apt-get install nodejs npm)" >&2
    exit 1
  fi
  if [ ! -x node_modules/.bin/azurite-blob ]; then
    echo "azurite: installing into .tools/node_modules"
    npm ci --prefix . --ignore-scripts --no-audit --no-fund --loglevel=error
  fi
  node_modules/.bin/azurite-blob --blobHost "$HOST" --blobPort "$PORT" \
    --skipApiVersionCheck --disableTelemetry --inMemoryPersistence --silent >azurite.log 2>&1 &
  echo $! >"$PIDFILE"
  i=0
  until answers; do
    i=$((i + 1))
    if ! ours || [ "$i" -gt 120 ]; then
      echo "azurite: did not start on $HOST:$PORT; its output:" >&2
      cat azurite.log >&2
      exit 1
    fi
    sleep 0.25
  done
  echo "azurite: Blob service on http://$HOST:$PORT/devstoreaccount1 (pid $(cat "$PIDFILE"))"
  ;;
stop)
  if ours; then
    kill "$(cat "$PIDFILE")"
    echo "azurite: stopped"
  fi
  rm -f "$PIDFILE"
  ;;
*)
  echo "usage: $0 start|stop|running" >&2
  exit 2
  ;;
esac
