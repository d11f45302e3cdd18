#!/usr/bin/env bash
# First start: a UTF-8 cluster (as the official image makes; SQL_ASCII would hand clients bytes) with POSTGRES_USER as its superuser (password POSTGRES_PASSWORD) owning
# POSTGRES_DB; then the server, listening on the container's network, as PID 1.
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}" >"$pwfile"
    "$bin/initdb" -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 --auth-host=scram-sha-256 \
        --auth-local=trust >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
    "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "${POSTGRES_DB:-postgres}" != postgres ]; then
        "$bin/createdb" -U "${POSTGRES_USER:-postgres}" -O "${POSTGRES_USER:-postgres}" "$POSTGRES_DB"
    fi
    "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'
