#!/bin/bash
# Entry point of the PostgreSQL stand-in image: what docker-compose.yml relies on from the
# official postgres image, and nothing more.
#   - POSTGRES_PASSWORD (required), POSTGRES_USER (default postgres), POSTGRES_DB (default: the user)
#   - on an empty $PGDATA: initdb with scram-sha-256 for every TCP connection and peer on the
#     unix socket, then create POSTGRES_DB; an initialised $PGDATA is used as it is
#   - listens on *:5432 and on /var/run/postgresql; runs as the image's non-root user
#   - `postgres -c ...` arguments pass through (fsync and the rest stay at their safe defaults
#     unless compose sets them); an argument list starting with "-" means `postgres ARGS`
# Unlike the official image, "trust" (POSTGRES_HOST_AUTH_METHOD=trust) is refused.
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    echo "postgres-standin: refusing to run as root; the image runs as user postgres" >&2
    exit 1
fi

: "${PGDATA:?PGDATA must be set}"
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-standin: the database is uninitialised and POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    if [ "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" != scram-sha-256 ]; then
        echo "postgres-standin: only scram-sha-256 host authentication is supported" >&2
        exit 1
    fi
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    # The password goes to initdb through a private file that is gone before the server starts.
    pwfile=$(umask 077 && mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list, as in the official image
    initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
        ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    trap - EXIT
    {
        echo
        echo "# postgres-standin: every TCP client authenticates with a password (scram-sha-256)"
        echo "host all all all scram-sha-256"
    } >>"$PGDATA/pg_hba.conf"
    {
        echo
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/var/run/postgresql'"
        echo "password_encryption = 'scram-sha-256'"
    } >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # single-user mode: no server listens while the database is being created
        printf 'CREATE DATABASE "%s";\n' "${POSTGRES_DB//\"/\"\"}" \
            | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "postgres-standin: initialised $PGDATA (database $POSTGRES_DB)"
fi

unset POSTGRES_PASSWORD
exec "$@"
