"""A Prometheus server's view of a running `quickpay up`: the scrape configuration (printed
by `quickpay prometheus config`) and the PostgreSQL exporter's environment (`quickpay
prometheus postgres-exporter`).

What there is to scrape: one address per stack, the gateway's GET /metrics (admin bearer
token, read by Prometheus from the stack's `admin.token` file, never put in the config).
The gateway workers share that port (SO_REUSEPORT), so one scrape reaches one of them, and
it answers for all (gateway/metrics.py: the workers' shared multiprocess directory; one
`quickpay_gateway_worker_start_time_seconds{pid}` series per live worker) and asks every
shard worker and the notifier at scrape time (shard workers have no HTTP port of their own).
PostgreSQL's own statistics come from Debian's `prometheus-postgres-exporter`, one per
PostgreSQL server, each a second job in the same configuration.

The rules are deploy/prometheus/rules.yml, the same file the compose stacks load.
Prometheus reads YAML; the configuration is printed as JSON, which is YAML too (the
package needs no YAML library at run time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "GATEWAY_JOB",
    "POSTGRES_JOB",
    "RULES_FILE",
    "SCRAPE_INTERVAL_S_DEFAULT",
    "SCRAPE_INTERVAL_S_MAX",
    "SCRAPE_INTERVAL_S_MIN",
    "SCRAPE_TIMEOUT_S_MAX",
    "TARGETS_MAX",
    "postgres_exporter_env",
    "scrape_config",
]

GATEWAY_JOB = "quickpay-gateway"  # the alert rules name it (QuickpayGatewayDown)
POSTGRES_JOB = "quickpay-postgres"
# The rule file the compose stacks load too, where a source checkout (or an editable
# install) has it.
RULES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules.yml"
SCRAPE_INTERVAL_S_DEFAULT = 15
SCRAPE_INTERVAL_S_MIN = 1
SCRAPE_INTERVAL_S_MAX = 300
# A scrape pings every shard (each ping bounded by the shard client's call timeout); past
# this Prometheus gives up on it and marks the target down.
SCRAPE_TIMEOUT_S_MAX = 10
TARGETS_MAX = 64  # exporters per configuration (one per PostgreSQL server)


def _target(address: str) -> str:
    """host:port, refusing anything else (a scheme or a path would make a broken config)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return address


def scrape_config(
    gateway: str,
    token_file: Path,
    *,
    rules: list[Path] | None = None,
    postgres_exporters: list[str] | None = None,
    scrape_interval_s: int = SCRAPE_INTERVAL_S_DEFAULT,
) -> dict[str, Any]:
    """The configuration of a Prometheus server scraping one stack: its gateway at
    `gateway` (host:port) with the admin token read from `token_file`, and each
    PostgreSQL exporter listed (host:port). Raises ValueError on a bad argument."""
    if not SCRAPE_INTERVAL_S_MIN <= scrape_interval_s <= SCRAPE_INTERVAL_S_MAX:
        raise ValueError(
            f"the scrape interval must be {SCRAPE_INTERVAL_S_MIN}-{SCRAPE_INTERVAL_S_MAX} s, not {scrape_interval_s}"
        )
    exporters = [_target(a) for a in postgres_exporters or []]
    if len(exporters) > TARGETS_MAX:
        raise ValueError(f"at most {TARGETS_MAX} PostgreSQL exporters")
    interval = f"{scrape_interval_s}s"
    timeout = f"{min(scrape_interval_s, SCRAPE_TIMEOUT_S_MAX)}s"
    jobs: list[dict[str, Any]] = [
        {
            "job_name": GATEWAY_JOB,
            "metrics_path": "/metrics",
            "scheme": "http",
            "authorization": {"type": "Bearer", "credentials_file": str(Path(token_file).resolve())},
            "static_configs": [{"targets": [_target(gateway)]}],
        }
    ]
    if exporters:
        jobs.append({"job_name": POSTGRES_JOB, "static_configs": [{"targets": exporters}]})
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval},
        "rule_files": [str(Path(r).resolve()) for r in (rules if rules is not None else [RULES_FILE])],
        "scrape_configs": jobs,
    }


def render(config: dict[str, Any]) -> str:
    """The configuration as Prometheus reads it (JSON is YAML)."""
    return json.dumps(config, indent=2) + "\n"


def postgres_exporter_env(state_dir: Path, listen: str) -> tuple[list[str], dict[str, str]]:
    """argv and the extra environment for Debian's prometheus-postgres-exporter against the
    embedded PostgreSQL of the `quickpay up` in `state_dir`. The password stays in the
    stack's password file (PGPASSFILE): it is on no command line and in no environment."""
    from quickpay.embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(state_dir))
    if not pg.passfile.exists() or not pg.port_file.exists():
        raise ValueError(f"no embedded PostgreSQL in {state_dir} (is `quickpay up --state-dir {state_dir}` running?)")
    dsn = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable"
    argv = ["prometheus-postgres-exporter", f"--web.listen-address={_target(listen)}"]
    return argv, {"DATA_SOURCE_NAME": dsn, "PGPASSFILE": str(pg.passfile)}
