#!/usr/bin/env bash
# Side by side: ws4redis 0.6.0 (uWSGI + gevent, one worker) and twisted_ws4redis,
# the same scenarios from bench/wsload.py, a fresh server per run, server on
# CPU 0 and load generator on CPU 1. Needs a redis-server on $REDIS_PORT (it is
# FLUSHALLed) and `make install` done. Prints JSON lines prefixed by the server.
#
#   REDIS_PORT=6390 N=300 RUNS=3 bench/reference/compare.sh > compare.log
set -euo pipefail
cd "$(dirname "$0")/../.."
REDIS_PORT=${REDIS_PORT:-6390}
N=${N:-300}
RUNS=${RUNS:-3}
SCRATCH=${SCRATCH:-/tmp/ws4redis-compare}
mkdir -p "$SCRATCH"
export CHATSERVER_DB="$SCRATCH/chatserver.sqlite3"
(cd examples/chatserver && ../../.venv/bin/python manage.py migrate --noinput -v0 \
    && ../../.venv/bin/python manage.py loaddata -v0 demo_users)
ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT/0" --prefix demo -n "$N" --churn-seconds 5 --timeout 10
      --scenarios connect,fanout,chat,churn,session)

for run in $(seq "$RUNS"); do
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    REDIS="127.0.0.1:$REDIS_PORT" PORT=8100 CPU=0 SCRATCH="$SCRATCH/ref" \
        bench/reference/run_reference.sh > "$SCRATCH/uwsgi.log" 2>&1 &
    # The first run also builds the reference's virtualenv (uWSGI compiles): wait up to 5 minutes.
    for _ in $(seq 600); do curl -sf -o /dev/null http://127.0.0.1:8100/accounts/login/ && break; sleep 0.5; done
    worker=$(pgrep -P "$(cat "$SCRATCH/ref/master.pid")")
    taskset -c 1 .venv/bin/python bench/wsload.py --url ws://127.0.0.1:8100/ws/ --server-pid "$worker" \
        --login-url http://127.0.0.1:8100/accounts/login/ "${ARGS[@]}" | sed 's/^/ws4redis /'
    kill -INT "$(cat "$SCRATCH/ref/master.pid")"; wait || true  # SIGTERM would make uWSGI reload

    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    (cd examples/chatserver && exec taskset -c 0 ../../.venv/bin/twistd --nodaemon --pidfile= ws4redis \
        --settings=chatserver.settings --endpoint=tcp:8090:interface=127.0.0.1:backlog=4096 \
        --redis="redis://127.0.0.1:$REDIS_PORT/0") > "$SCRATCH/twistd.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:8090/accounts/login/ && break; sleep 0.5; done
    taskset -c 1 .venv/bin/python bench/wsload.py --url ws://127.0.0.1:8090/ws/ --server-pid "$server" \
        --login-url http://127.0.0.1:8090/accounts/login/ "${ARGS[@]}" | sed 's/^/twisted_ws4redis /'
    kill "$server"; wait || true
done
