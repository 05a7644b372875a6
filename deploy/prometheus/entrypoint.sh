#!/bin/sh
# The compose Prometheus image's entrypoint (deploy/prometheus/Dockerfile).
#   server              Prometheus on :9090 with /etc/quickpay-prometheus/prometheus.yml. The
#                       gateway's admin token comes in QUICKPAY_ADMIN_TOKEN and is written to
#                       a private file on the tmpfs (mode 0600), which the configuration names;
#                       the PostgreSQL exporters, from POSTGRES_EXPORTER_TARGETS.
#   postgres-exporter   prometheus-postgres-exporter on :9187 (DATA_SOURCE_NAME required).
set -eu
role=${1:-server}
[ "$#" -gt 0 ] && shift
case "$role" in
    server)
        if [ -z "${QUICKPAY_ADMIN_TOKEN:-}" ]; then
            echo "quickpay-prometheus: QUICKPAY_ADMIN_TOKEN is not set (run quickpay secrets --out .env)" >&2
            exit 2
        fi
        umask 077
        mkdir -p /tmp/quickpay-prometheus
        printf '%s' "$QUICKPAY_ADMIN_TOKEN" > /tmp/quickpay-prometheus/admin.token
        unset QUICKPAY_ADMIN_TOKEN
        # POSTGRES_EXPORTER_TARGETS: host:port,host:port (the exporters to scrape)
        targets=""
        for target in $(printf '%s' "${POSTGRES_EXPORTER_TARGETS:-}" | tr ',' ' '); do
            case "$target" in
                *[!A-Za-z0-9.:-]*|"") echo "quickpay-prometheus: bad target $target" >&2; exit 2 ;;
            esac
            targets="$targets${targets:+, }\"$target\""
        done
        printf '[{"targets": [%s]}]\n' "$targets" > /tmp/quickpay-prometheus/postgres-targets.json
        exec prometheus --config.file=/etc/quickpay-prometheus/prometheus.yml \
            --storage.tsdb.path=/prometheus --web.listen-address=0.0.0.0:9090 "$@"
        ;;
    postgres-exporter)
        if [ -z "${DATA_SOURCE_NAME:-}" ]; then
            echo "quickpay-prometheus: DATA_SOURCE_NAME is not set" >&2
            exit 2
        fi
        exec prometheus-postgres-exporter --web.listen-address=0.0.0.0:9187 "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
