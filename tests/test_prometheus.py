"""A real Prometheus against a real stack. The rules (deploy/prometheus/rules.yml) pass
`promtool check rules` and their unit tests (`promtool test rules`: each alert fires on the
series it is for and stays quiet on the others); `quickpay prometheus config` prints a
configuration `promtool check config` accepts, and refuses bad arguments; and Debian's
Prometheus server, started on a free loopback port with that configuration, scrapes the
shared `quickpay up` stack (gateway /metrics with the admin token, which answers for both
gateway workers and both shard workers) and the stack's PostgreSQL (Debian's
prometheus-postgres-exporter, started by `quickpay prometheus postgres-exporter`). Through
its HTTP API: both targets up, the payments counter > 0 and growing with more payments,
both shards up, one series per gateway worker, PostgreSQL's statistics present, every rule
loaded and evaluated without error, and no alert firing. Those checks are
tests/prometheus_checks.py, the same ones scripts/compose-smoke makes against the compose
stack's `prometheus` profile; each is also shown here to fail on an answer that is wrong.

Prometheus is installed with scripts/install-prometheus when missing and this runs as root
(as in CI); otherwise the tests that need it are skipped with the command to run."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import prometheus_checks as checks
import pytest
from conftest import ROOT, Stack, free_port

from quickpay import prometheus

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules.test.yml"
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
INSTALL_TIMEOUT_S = 240.0  # apt-get update and install; within pytest-timeout's 300 s a test
PROMTOOL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0  # Prometheus ready (/-/ready), and the exporter serving
SCRAPE_WAIT_S = 45.0  # a condition on scraped data: many 1 s scrape and rule intervals
PAYMENTS = 3
T = TypeVar("T")


def _require_prometheus() -> None:
    binaries = ("prometheus", "promtool", "prometheus-postgres-exporter")
    if all(shutil.which(b) for b in binaries):
        return
    if os.geteuid() != 0:
        pytest.skip("Prometheus is not installed; as root run scripts/install-prometheus")
    subprocess.run(["bash", str(ROOT / "scripts" / "install-prometheus")], check=True, timeout=INSTALL_TIMEOUT_S)
    missing = [b for b in binaries if not shutil.which(b)]
    assert not missing, f"scripts/install-prometheus left {missing} missing"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", "prometheus", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
    )


# ---- the rules and the configuration, without a server --------------------------------------
def test_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    _require_prometheus()
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    tested = _promtool("test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr

    # The compose stacks' configuration (deploy/prometheus/prometheus.yml), with the image's
    # paths moved here: the same rules, the token and the exporters' targets from files.
    compose = COMPOSE_CONFIG.read_text()
    for path in ("/etc/quickpay-prometheus/rules.yml", "/tmp/quickpay-prometheus/admin.token"):
        assert path in compose
    here = tmp_path / "image"
    (here / "etc").mkdir(parents=True)
    (here / "tmp").mkdir()
    shutil.copy(RULES, here / "etc" / "rules.yml")
    (here / "tmp" / "admin.token").write_text("token")
    (here / "tmp" / "postgres-targets.json").write_text(json.dumps([{"targets": ["pg0-exporter:9187"]}]))
    moved = compose.replace("/etc/quickpay-prometheus/", f"{here}/etc/").replace(
        "/tmp/quickpay-prometheus/", f"{here}/tmp/"
    )
    (here / "prometheus.yml").write_text(moved)
    checked = _promtool("check", "config", str(here / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_config_names_the_token_file_and_refuses_bad_arguments(tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    token.write_text("secret-token-never-in-the-config\n")
    config = prometheus.scrape_config("127.0.0.1:8080", token, postgres_exporters=["127.0.0.1:9187"])
    text = prometheus.render(config)
    assert "secret-token-never-in-the-config" not in text
    jobs = {job["job_name"]: job for job in json.loads(text)["scrape_configs"]}
    assert jobs[prometheus.GATEWAY_JOB]["authorization"] == {"type": "Bearer", "credentials_file": str(token)}
    assert jobs[prometheus.GATEWAY_JOB]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    assert jobs[prometheus.POSTGRES_JOB]["static_configs"] == [{"targets": ["127.0.0.1:9187"]}]
    assert config["rule_files"] == [str(prometheus.RULES_FILE)]
    assert prometheus.scrape_config("h:1", token, scrape_interval_s=60)["global"]["scrape_timeout"] == "10s"
    for bad in ("http://127.0.0.1:8080", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:80/metrics", ":80"):
        with pytest.raises(ValueError, match="host:port"):
            prometheus.scrape_config(bad, token)
    for interval in (0, prometheus.SCRAPE_INTERVAL_S_MAX + 1):
        with pytest.raises(ValueError, match="scrape interval"):
            prometheus.scrape_config("127.0.0.1:8080", token, scrape_interval_s=interval)
    with pytest.raises(ValueError, match="at most"):
        prometheus.scrape_config(
            "127.0.0.1:8080", token, postgres_exporters=["127.0.0.1:9187"] * (prometheus.TARGETS_MAX + 1)
        )
    # The command says what to do when the stack is not there.
    missing = _cli("config", "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "quickpay up --state-dir" in missing.stderr
    bad = _cli("config", "--token-file", str(token), "--scrape-interval-s", "0")
    assert bad.returncode != 0 and "scrape interval" in bad.stderr
    no_stack = _cli("postgres-exporter", "--state-dir", str(tmp_path / "nowhere"))
    assert no_stack.returncode != 0 and "no embedded PostgreSQL" in no_stack.stderr


# ---- a real server against the shared stack ----------------------------------------------------
def _start(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def prometheus_server(stack: Stack, tmp_path: Path) -> Iterator[tuple[checks.PrometheusApi, Callable[[], str]]]:
    """Debian's Prometheus and PostgreSQL exporter, scraping the shared stack every second."""
    _require_prometheus()
    exporter_port, server_port = free_port(), free_port()
    exporter_log, server_log = tmp_path / "exporter.log", tmp_path / "prometheus.log"
    procs: list[subprocess.Popen[bytes]] = []

    def logs() -> str:
        return "".join(p.read_text(errors="replace") for p in (server_log, exporter_log) if p.exists())

    try:
        procs.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "quickpay.cli",
                    "prometheus",
                    "postgres-exporter",
                    "--state-dir",
                    str(stack.state_dir),
                    "--listen",
                    f"127.0.0.1:{exporter_port}",
                ],
                exporter_log,
            )
        )
        config_path = tmp_path / "prometheus.yml"
        made = _cli(
            "config",
            "--state-dir",
            str(stack.state_dir),
            "--port",
            str(stack.port),
            "--scrape-interval-s",
            "1",
            "--postgres-exporter",
            f"127.0.0.1:{exporter_port}",
            "--out",
            str(config_path),
        )
        assert made.returncode == 0, made.stderr
        assert stack.admin_token not in config_path.read_text()
        checked = _promtool("check", "config", str(config_path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        procs.append(
            _start(
                [
                    "prometheus",
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{server_port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                server_log,
            )
        )
        prom = checks.PrometheusApi(f"http://127.0.0.1:{server_port}")

        def ready() -> bool:
            for proc in procs:
                assert proc.poll() is None, f"{proc.args[:4]} exited with {proc.returncode}\n{logs()[-4000:]}"
            return prom.ready()

        checks.wait_for("Prometheus ready", ready, START_TIMEOUT_S, logs)
        yield prom, logs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_prometheus_scrapes_the_stack_and_evaluates_the_rules(
    stack: Stack, partner: dict[str, Any], prometheus_server: tuple[checks.PrometheusApi, Callable[[], str]]
) -> None:
    prom, logs = prometheus_server
    customer = stack.new_customer(partner, shard=0)
    creditor = stack.new_account(shard=1)

    def pay(count: int) -> None:
        for _ in range(count):
            reply = stack.pay(partner, customer["agreement_id"], creditor, "1.25")
            assert reply.status == 201, reply.body

    def wait(what: str, check: Callable[[], T]) -> T:
        return checks.wait_for(what, check, SCRAPE_WAIT_S, logs)

    pay(PAYMENTS)

    # Both targets are scraped, and up (a scrape may fail while the machine is loaded: the
    # wait is for both up at once; the failure message shows the last errors).
    jobs = {prometheus.GATEWAY_JOB: 1, prometheus.POSTGRES_JOB: 1}
    wait("both targets up", lambda: checks.targets_up(prom, jobs))
    first = wait("the payments counter", lambda: checks.payments_counted(prom, PAYMENTS))

    # What only the shard workers know, asked at scrape time: both up, transfers committed.
    committed = wait("every shard up", lambda: checks.shards_up(prom, stack.shards))
    assert sum(committed.values()) >= PAYMENTS
    # One series per gateway worker (the shared stack runs two), each a distinct live process
    # that started within the hour.
    wait("one series per gateway worker", lambda: checks.gateway_workers(prom, 2))
    # PostgreSQL's statistics, from the exporter: reachable, and the shard databases committing.
    wait("PostgreSQL's statistics", lambda: checks.postgres_up(prom, 1))

    # More payments: the counter grows by at least as many.
    pay(PAYMENTS)
    wait("the payments counter to grow", lambda: checks.payments_counted(prom, int(first) + PAYMENTS))

    # Every rule loaded, evaluated and healthy; the recording rules produce series.
    wait("every rule evaluated", lambda: checks.rules_healthy(prom))
    assert wait("the worker count rule", lambda: checks.recorded(prom, "quickpay:gateway_workers:count")) == 2.0
    rate = wait(
        "the payments rate rule above 0",
        lambda: (v := checks.recorded(prom, 'quickpay:payment_requests:rate1m{route="/v1/quick-payments"}')) > 0 and v,
    )
    assert rate > 0
    # A healthy stack: no target or shard down. (Other alerts may fire on the shared stack
    # after tests that make failed webhooks or quarantined rows on purpose.)
    checks.none_firing(prom, checks.HEALTH_ALERTS)


def test_a_dead_gateway_workers_series_is_dropped_at_scrape_time(tmp_path: Path) -> None:
    """The per-worker series come from each worker's live-gauge file; a file whose process
    has exited is removed before the scrape is rendered, the live ones (this process) kept."""
    from gateway import metrics

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    for pid in (dead.pid, os.getpid()):
        (tmp_path / f"gauge_liveall_{pid}.db").write_bytes(b"")
    (tmp_path / "counter_123.db").write_bytes(b"")  # counters of dead workers still count
    (tmp_path / "gauge_liveall_notapid.db").write_bytes(b"")
    metrics._forget_dead_workers(str(tmp_path))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["counter_123.db", f"gauge_liveall_{os.getpid()}.db", "gauge_liveall_notapid.db"])


# ---- the compose stacks' Prometheus ---------------------------------------------------------------
@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "docker-compose.ha.yml"])
def test_compose_prometheus_is_opt_in_hardened_and_scrapes_every_database_server(compose_file: str) -> None:
    import yaml

    compose = yaml.safe_load((ROOT / compose_file).read_text())
    services = compose["services"]
    ours = {name: s for name, s in services.items() if "prometheus" in s.get("profiles", [])}
    exporters = {name for name, s in ours.items() if s["command"] == ["postgres-exporter"]}
    assert set(ours) == {"prometheus", *exporters}
    assert ours["prometheus"]["command"] == ["server"]
    quickpay_base = services["gateway"]["build"]["args"]["BASE_IMAGE"]
    for name, service in ours.items():
        assert service["image"] == "${QUICKPAY_PROMETHEUS_IMAGE:-quickpay-prometheus:latest}", name
        assert service["build"]["context"] == "deploy/prometheus", name
        assert service["build"]["args"]["BASE_IMAGE"] == quickpay_base, name  # built the way the others are
        assert service["restart"] == "always" and service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"] and "ALL" in service["cap_drop"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    # One exporter per PostgreSQL server of the file, each on its server's shard database
    # with the password from .env, and Prometheus told to scrape exactly those.
    servers = {name for name, s in services.items() if name.startswith("pg") and name not in ours}
    assert {ours[e]["depends_on"][0] for e in exporters} == servers
    for exporter in exporters:
        (server,) = ours[exporter]["depends_on"]
        dsn = ours[exporter]["environment"]["DATA_SOURCE_NAME"]
        assert dsn.startswith("postgresql://postgres:${POSTGRES_PASSWORD:?"), dsn
        assert f"@{server}:5432/quickpay_shard_{server[2]}?" in dsn, dsn
    env = ours["prometheus"]["environment"]
    assert env["QUICKPAY_ADMIN_TOKEN"].startswith("${QUICKPAY_ADMIN_TOKEN:?")
    assert sorted(env["POSTGRES_EXPORTER_TARGETS"].split(",")) == sorted(f"{e}:9187" for e in exporters)
    assert set(ours["prometheus"]["depends_on"]) == {"gateway", *exporters}
    assert ours["prometheus"]["ports"] == ["127.0.0.1:${QUICKPAY_PROMETHEUS_PORT:-9090}:9090"]


def test_compose_prometheus_image_installs_debians_packages_and_runs_as_prometheus() -> None:
    dockerfile = (ROOT / "deploy" / "prometheus" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim" and lines[1] == "FROM ${BASE_IMAGE}"
    assert [line for line in lines if line.startswith("FROM")] == ["FROM ${BASE_IMAGE}"]  # nothing pulled
    assert "apt-get install" in dockerfile and "prometheus prometheus-postgres-exporter" in dockerfile
    assert "USER prometheus" in lines
    for copied in ("prometheus.yml", "rules.yml", "entrypoint.sh"):
        assert (ROOT / "deploy" / "prometheus" / copied).is_file()
    entrypoint = ROOT / "deploy" / "prometheus" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    assert subprocess.run(["sh", "-n", str(entrypoint)], capture_output=True).returncode == 0
    install = ROOT / "scripts" / "install-prometheus"
    assert os.access(install, os.X_OK)
    assert subprocess.run(["bash", "-n", str(install)], capture_output=True).returncode == 0


# ---- the shared checks fail on wrong answers (a fake Prometheus API on loopback) -----------------
class _FakePrometheus:
    """Answers GET /api/v1/{path}[?query=EXPR] from `answers` (keyed "path" or "query?EXPR"),
    as a Prometheus server would; anything not in the table is a 400 "bad_data"."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = urllib.parse.parse_qs(url.query)
                key = url.path.removeprefix("/api/v1/")
                if "query" in params:
                    key += "?" + params["query"][0]
                data = fake.answers.get(key)
                status, body = (
                    (200, {"status": "success", "data": data})
                    if data is not None
                    else (400, {"status": "error", "errorType": "bad_data"})
                )
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.api = checks.PrometheusApi(f"http://127.0.0.1:{self.server.server_address[1]}")

    def vector(self, expr: str, *samples: tuple[dict[str, str], float]) -> None:
        self.answers["query?" + expr] = {
            "resultType": "vector",
            "result": [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in samples],
        }


@pytest.fixture
def fake_prometheus() -> Iterator[_FakePrometheus]:
    fake = _FakePrometheus()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def test_the_target_and_series_checks_wait_until_every_one_is_up(fake_prometheus: _FakePrometheus) -> None:
    fake, prom = fake_prometheus, fake_prometheus.api
    gw, pg = prometheus.GATEWAY_JOB, prometheus.POSTGRES_JOB
    targets = [("gateway:8080", gw, "up"), ("pg0-exporter:9187", pg, "up"), ("pg1-exporter:9187", pg, "down")]

    def set_targets() -> None:
        fake.answers["targets"] = {
            "activeTargets": [
                {"labels": {"job": j, "instance": i}, "health": h, "lastError": "" if h == "up" else "refused"}
                for i, j, h in targets
            ]
        }

    set_targets()
    fake.vector("up", *(({"job": j, "instance": i}, 1.0 if h == "up" else 0.0) for i, j, h in targets))
    with pytest.raises(checks.Waiting, match="not every target is up"):
        checks.targets_up(prom, {gw: 1, pg: 2})
    targets[2] = ("pg1-exporter:9187", pg, "up")
    set_targets()
    with pytest.raises(checks.Waiting, match="up: "):  # the query still says 0 for one
        checks.targets_up(prom, {gw: 1, pg: 2})
    with pytest.raises(checks.Waiting, match="targets per job"):
        checks.targets_up(prom, {gw: 1, pg: 1})
    fake.vector("up", *(({"job": j, "instance": i}, 1.0) for i, j, _ in targets))
    assert checks.targets_up(prom, {gw: 1, pg: 2}) == {(j, i): 1.0 for i, j, _ in targets}

    up, committed = f'quickpay_shard_up{{job="{gw}"}}', f'quickpay_shard_committed_transfers_total{{job="{gw}"}}'
    fake.vector(up, ({"shard": "0"}, 1.0), ({"shard": "1"}, 0.0))
    fake.vector(committed, ({"shard": "0"}, 7.0), ({"shard": "1"}, 0.0))
    with pytest.raises(checks.Waiting, match="quickpay_shard_up"):
        checks.shards_up(prom, 2)
    fake.vector(up, ({"shard": "0"}, 1.0))
    with pytest.raises(checks.Waiting, match="quickpay_shard_up"):
        checks.shards_up(prom, 2)
    fake.vector(up, ({"shard": "0"}, 1.0), ({"shard": "1"}, 1.0))
    with pytest.raises(checks.Waiting, match="committed"):
        checks.shards_up(prom, 2)
    fake.vector(committed, ({"shard": "0"}, 7.0), ({"shard": "1"}, 3.0))
    assert checks.shards_up(prom, 2) == {"0": 7.0, "1": 3.0}
    with pytest.raises(checks.Waiting, match=">= 4"):
        checks.shards_up(prom, 2, committed_min=4)

    pg_up = f'pg_up{{job="{pg}"}}'
    commits = f'sum by (instance) (pg_stat_database_xact_commit{{job="{pg}",datname=~"quickpay_shard_.*"}})'
    fake.vector(pg_up, ({"instance": "pg0"}, 1.0), ({"instance": "pg1"}, 0.0))
    fake.vector(commits, ({"instance": "pg0"}, 12.0), ({"instance": "pg1"}, 5.0))
    with pytest.raises(checks.Waiting, match="pg_up"):
        checks.postgres_up(prom, 2)
    fake.vector(pg_up, ({"instance": "pg0"}, 1.0), ({"instance": "pg1"}, 1.0))
    assert checks.postgres_up(prom, 2) == {"pg0": 12.0, "pg1": 5.0}
    fake.vector(commits, ({"instance": "pg0"}, 12.0))
    with pytest.raises(checks.Waiting, match="xact_commit"):
        checks.postgres_up(prom, 2)

    workers = f'quickpay_gateway_worker_start_time_seconds{{job="{gw}"}}'
    fake.vector(workers, ({"pid": "10"}, 1000.0), ({"pid": "11"}, 1001.0))
    assert len(checks.gateway_workers(prom, 2, now_s=1100.0)) == 2
    with pytest.raises(checks.Waiting, match="2 gateway worker series, expected 1"):
        checks.gateway_workers(prom, 1, now_s=1100.0)
    with pytest.raises(checks.CheckFailed, match=r"started at 1001\.0, now is 1000\.5"):
        checks.gateway_workers(prom, 2, now_s=1000.5)
    fake.vector(workers, ({"pid": "10"}, 1000.0), ({"pid": "10"}, 1001.0))
    with pytest.raises(checks.CheckFailed, match="distinct pids"):
        checks.gateway_workers(prom, 2, now_s=1100.0)

    # An expression Prometheus refuses is a failure at once, never a wait.
    with pytest.raises(checks.CheckFailed, match="HTTP 400"):
        checks.recorded(prom, "quickpay:gateway_workers:count")
    fake.vector("quickpay:gateway_workers:count")
    with pytest.raises(checks.Waiting, match="no sample yet"):
        checks.recorded(prom, "quickpay:gateway_workers:count")
    fake.vector("quickpay:gateway_workers:count", ({}, 0.0))
    assert checks.recorded(prom, "quickpay:gateway_workers:count") == 0.0


def test_the_rule_and_alert_checks_fail_on_errors_and_missing_alerts(fake_prometheus: _FakePrometheus) -> None:
    fake, prom = fake_prometheus, fake_prometheus.api

    def set_rules(health: str = "ok", alerts: tuple[str, ...] = checks.ISSUE_ALERTS) -> None:
        fake.answers["rules"] = {
            "groups": [
                {
                    "name": checks.RECORDING_GROUP,
                    "rules": [{"name": "quickpay:x", "type": "recording", "health": health, "lastError": "boom"}],
                },
                {
                    "name": checks.ALERT_GROUP,
                    "rules": [{"name": a, "type": "alerting", "health": "ok"} for a in alerts],
                },
            ]
        }

    set_rules("unknown")
    with pytest.raises(checks.Waiting, match="not evaluated yet"):
        checks.rules_healthy(prom)
    set_rules("err")
    with pytest.raises(checks.CheckFailed, match=r"rules in error: \[\('quickpay:x', 'boom'\)\]"):
        checks.rules_healthy(prom)
    set_rules(alerts=checks.ISSUE_ALERTS[1:])
    with pytest.raises(checks.CheckFailed, match="QuickpayShardNotReady"):
        checks.rules_healthy(prom)
    set_rules()
    assert set(checks.rules_healthy(prom)) == {checks.RECORDING_GROUP, checks.ALERT_GROUP}
    fake.answers["rules"] = {"groups": []}
    with pytest.raises(checks.Waiting, match="rule groups"):
        checks.rules_healthy(prom)

    def set_alerts(*firing: str) -> None:
        fake.answers["alerts"] = {
            "alerts": [{"labels": {"alertname": a}, "state": "firing"} for a in firing]
            + [{"labels": {"alertname": "QuickpayGatewayDown"}, "state": "pending"}]
        }

    set_alerts("QuickpayWebhookBacklog")
    assert checks.none_firing(prom) == {"QuickpayWebhookBacklog"}
    set_alerts("QuickpayWebhookBacklog", "QuickpayShardNotReady")
    with pytest.raises(checks.Waiting, match="QuickpayShardNotReady"):
        checks.none_firing(prom)


def test_wait_for_polls_until_the_check_holds_or_its_time_is_up() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    seen: list[float] = []

    def check() -> float:
        seen.append(now[0])
        if now[0] < 2.0:
            raise checks.Waiting(f"at {now[0]}")
        return 0.0  # a value, even a zero one, is a result

    assert checks.wait_for("x", check, 10.0, clock=lambda: now[0], sleep=sleep, poll_s=0.5) == 0.0
    assert seen == [0.0, 0.5, 1.0, 1.5, 2.0]
    now[0] = 0.0
    with pytest.raises(checks.CheckFailed, match=r"never: not within 3.0 s \(last: at 3.0\)\nthe logs"):
        checks.wait_for(
            "never",
            lambda: (_ for _ in ()).throw(checks.Waiting(f"at {now[0]}")),
            3.0,
            lambda: "the logs",
            clock=lambda: now[0],
            sleep=sleep,
        )
    now[0] = 0.0
    with pytest.raises(checks.CheckFailed, match="last: None"):
        checks.wait_for("none", lambda: None, 1.0, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(checks.CheckFailed, match="broken"):  # a failure is not waited on
        checks.wait_for("f", lambda: (_ for _ in ()).throw(checks.CheckFailed("broken")), 1e9, sleep=sleep)
