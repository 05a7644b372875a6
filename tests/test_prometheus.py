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
loaded and evaluated without error, and no alert firing.

Prometheus is installed with scripts/install-prometheus when missing and this runs as root
(as in CI); otherwise the tests that need it are skipped with the command to run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Stack, free_port, http

from quickpay import prometheus

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules.test.yml"
COMPOSE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
INSTALL_TIMEOUT_S = 240.0  # apt-get update and install; within pytest-timeout's 300 s a test
PROMTOOL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0  # Prometheus ready (/-/ready), and the exporter serving
SCRAPE_WAIT_S = 45.0  # a condition on scraped data: many 1 s scrape and rule intervals
PAYMENTS = 3


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
class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        reply = http("GET", f"{self.url}/api/v1/{path}{query}", timeout=10)
        assert reply.status == 200 and reply.body["status"] == "success", reply.body
        return reply.body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single sample's value, or None when the query has no result yet."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


def _wait_for(what: str, check: Callable[[], Any], log: Callable[[], str], timeout_s: float = SCRAPE_WAIT_S) -> Any:
    """check()'s first truthy result, polled until timeout_s (then fail, with the logs)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})\n{log()[-4000:]}")


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
def prometheus_server(stack: Stack, tmp_path: Path) -> Iterator[tuple[Prometheus, Callable[[], str]]]:
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
        url = f"http://127.0.0.1:{server_port}"

        def ready() -> bool:
            for proc in procs:
                assert proc.poll() is None, f"{proc.args[:4]} exited with {proc.returncode}\n{logs()[-4000:]}"
            try:
                return http("GET", url + "/-/ready", timeout=2).status == 200
            except OSError:
                return False

        _wait_for("Prometheus ready", ready, logs, START_TIMEOUT_S)
        yield Prometheus(url), logs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def test_prometheus_scrapes_the_stack_and_evaluates_the_rules(
    stack: Stack, partner: dict[str, Any], prometheus_server: tuple[Prometheus, Callable[[], str]]
) -> None:
    prom, logs = prometheus_server
    customer = stack.new_customer(partner, shard=0)
    creditor = stack.new_account(shard=1)

    def pay(count: int) -> None:
        for _ in range(count):
            reply = stack.pay(partner, customer["agreement_id"], creditor, "1.25")
            assert reply.status == 201, reply.body

    pay(PAYMENTS)

    # Both targets are scraped, and up (a scrape may fail while the machine is loaded: the
    # wait is for both up at once; the failure message shows the last errors).
    seen: list[Any] = []

    def targets_up() -> dict[str, str] | None:
        active = prom.api("targets", state="active")["activeTargets"]
        seen[:] = [(t["labels"]["job"], t["health"], t.get("lastError")) for t in active]
        health = {t["labels"]["job"]: t["health"] for t in active}
        wanted = {prometheus.GATEWAY_JOB, prometheus.POSTGRES_JOB}
        return health if set(health) == wanted and set(health.values()) == {"up"} else None

    _wait_for("both targets up", targets_up, lambda: f"targets: {seen}\n{logs()}")

    payments = (
        'sum(quickpay_http_requests_total{job="quickpay-gateway",route="/v1/quick-payments",'
        'method="POST",status="201"})'
    )
    first = _wait_for(
        "the payments counter", lambda: (v := prom.value(payments)) is not None and v >= PAYMENTS and v, logs
    )
    assert first >= PAYMENTS

    # What only the shard workers know, asked at scrape time: both up, transfers committed.
    shards = {r["metric"]["shard"]: float(r["value"][1]) for r in prom.query("quickpay_shard_up")}
    assert shards == {str(s): 1.0 for s in range(stack.shards)}
    committed = prom.value("sum(quickpay_shard_committed_transfers_total)")
    assert committed is not None and committed >= PAYMENTS

    # One series per gateway worker (the shared stack runs two), each a distinct live process
    # that started within the hour.
    workers = prom.query("quickpay_gateway_worker_start_time_seconds")
    pids = {r["metric"].get("pid") for r in workers}
    assert len(workers) == 2 and len(pids) == 2 and None not in pids, workers
    for r in workers:
        assert time.time() - 3600 < float(r["value"][1]) <= time.time()

    # PostgreSQL's statistics, from the exporter: reachable, and the shard databases committing.
    assert prom.value('pg_up{job="quickpay-postgres"}') == 1.0
    xacts = prom.value('sum(pg_stat_database_xact_commit{datname=~"quickpay_shard_.*"})')
    assert xacts is not None and xacts > 0

    # More payments: the counter grows by at least as many.
    pay(PAYMENTS)
    _wait_for(
        "the payments counter to grow",
        lambda: (v := prom.value(payments)) is not None and v >= first + PAYMENTS,
        logs,
    )

    # Every rule loaded, evaluated and healthy; the recording rules produce series.
    def rules_evaluated() -> dict[str, list[dict[str, Any]]] | None:
        groups = {g["name"]: g["rules"] for g in prom.api("rules")["groups"]}
        if set(groups) != {"quickpay-recording", "quickpay-alerts"}:
            return None
        every = [r for rules in groups.values() for r in rules]
        bad = [(r["name"], r.get("lastError")) for r in every if r["health"] == "err"]
        assert not bad, bad
        return groups if all(r["health"] == "ok" for r in every) else None

    groups = _wait_for("every rule evaluated", rules_evaluated, logs)
    alerts = {r["name"] for r in groups["quickpay-alerts"]}
    for name in (
        "QuickpayShardNotReady",
        "QuickpayPaymentP99OverBudget",
        "QuickpayWebhookBacklog",
        "QuickpayNotifierRestarting",
        "QuickpayQuarantinedRows",
    ):
        assert name in alerts
    assert _wait_for("the worker count rule", lambda: prom.value("quickpay:gateway_workers:count"), logs) == 2.0
    rate = _wait_for(
        "the payments rate rule",
        lambda: prom.value('quickpay:payment_requests:rate1m{route="/v1/quick-payments"}'),
        logs,
    )
    assert rate > 0
    # A healthy stack: no target or shard down. (Other alerts may fire on the shared stack
    # after tests that make failed webhooks or quarantined rows on purpose.)
    firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"] if a["state"] == "firing"}
    assert not firing & {"QuickpayGatewayDown", "QuickpayShardNotReady", "QuickpayPostgresDown"}, firing


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
