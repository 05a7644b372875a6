"""docker-compose.ha.yml cannot drift from the code or from docker-compose.yml, statically (no
Docker): it runs the same quickpay services with the same commands plus each shard's
multi-host DSN; every secret is a required reference to .env (`${NAME:?...}`), DSNs hold no
password; etcd, the Patroni members and the ledger are on the internal network only and only
the gateway is published, on loopback; each member's Patroni configuration (written by
scripts/compose-ha/patroni_member.py) carries quickpay.ha.dcs_settings() for its shard's size
and otherwise the settings `quickpay up --ha` gives its members; and the smoke script's pieces
(what it takes from scripts/compose-smoke, the secrets it makes) are where it expects them."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from test_compose import _env

from quickpay.cli import build_parser
from quickpay.embedded_pg import shard_database
from quickpay.ha import NAMESPACE, REPLICATION_USER, REST_USER, SCOPE_PREFIX, HaCluster, Member, dcs_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_HA = ROOT / "docker-compose.ha.yml"
COMPOSE = ROOT / "docker-compose.yml"
HA_DIR = ROOT / "scripts" / "compose-ha"
SMOKE = ROOT / "scripts" / "compose-ha-smoke"
SECRETS = {
    "POSTGRES_PASSWORD",
    "QUICKPAY_TOKEN_KEY",
    "QUICKPAY_ADMIN_TOKEN",
    "QUICKPAY_CLUSTER_SECRET",
    "QUICKPAY_REPLICATION_PASSWORD",
    "QUICKPAY_PATRONI_PASSWORD",
    "QUICKPAY_ETCD_PASSWORD",
}
REFERENCE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:?[-?+]?)(?P<rest>[^}]*)\}")
REQUIRED = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}")


def _load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _services(path: Path = COMPOSE_HA) -> dict[str, dict[str, Any]]:
    return dict(_load(path)["services"])


def _quickpay_services(path: Path = COMPOSE_HA) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in _services(path).items()
        if "build" in s and s["build"].get("dockerfile") is None and s["build"]["context"] == "."
    }


def _members() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _services().items() if "QUICKPAY_HA_MEMBER" in _env(s)}


def _members_of(shard: int) -> list[str]:
    return sorted(name for name, s in _members().items() if _env(s)["QUICKPAY_SHARD"] == str(shard))


def _dsn_args(command: list[str]) -> list[str]:
    """The values of --dsn (one, or several after it, as the monitor and notifier take them)."""
    if "--dsn" not in command:
        return []
    values = []
    for token in command[command.index("--dsn") + 1 :]:
        if token.startswith("--"):
            break
        values.append(token)
    return values


def _without_dsn(command: list[str]) -> list[str]:
    dsns = _dsn_args(command)
    return [t for t in command if t != "--dsn" and t not in dsns]


def _patroni_member() -> ModuleType:
    spec = importlib.util.spec_from_file_location("patroni_member", HA_DIR / "patroni_member.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interpolated_env(service: dict[str, Any]) -> dict[str, str]:
    """The member's environment as compose makes it, with stand-in secrets."""
    return {key: REFERENCE.sub(lambda m: f"secret-of-{m['name']}", value) for key, value in _env(service).items()}


# ---- the same topology as docker-compose.yml ------------------------------------------------
def test_same_quickpay_services_and_commands_as_docker_compose_yml() -> None:
    base, ha = _quickpay_services(COMPOSE), _quickpay_services()
    assert set(ha) == set(base)
    for name, service in ha.items():
        # the HA file passes DSNs as --dsn (QUICKPAY_DSNS is comma-separated, like a host list)
        assert _without_dsn(service["command"]) == base[name]["command"], name
        for key in ("image", "build", "restart", "init", "read_only", "tmpfs", "cap_drop", "security_opt", "ports"):
            assert service.get(key) == base[name].get(key), f"{name}: {key} differs from docker-compose.yml"


@pytest.mark.parametrize("name", sorted(_quickpay_services()))
def test_service_command_parses(name: str) -> None:
    command = _quickpay_services()[name]["command"]
    args = build_parser().parse_args(command)  # exits (SystemExit) on anything argparse refuses
    assert args.command == command[0] and callable(args.func)


def test_every_shard_has_members_and_a_dsn_naming_each_of_them() -> None:
    services = _services()
    for name, service in _quickpay_services().items():
        command = service["command"]
        dsns = _dsn_args(command)
        if command[0] == "shard-worker":
            args = build_parser().parse_args(command)
            expected = {args.shard: dsns[0]}
            assert len(dsns) == 1, name
            for member in _members_of(args.shard):
                assert service["depends_on"][member] == {"condition": "service_healthy"}, name
        elif command[0] in ("monitor", "notifier"):
            expected = dict(enumerate(dsns))
        else:
            assert not dsns, name
            continue
        assert len(expected) >= 1
        for shard, dsn in expected.items():
            parts = urlsplit(dsn)
            userinfo, _, hosts = parts.netloc.rpartition("@")
            assert userinfo == "postgres", f"{name}: a DSN names user postgres and no password: {dsn}"
            assert parts.path == f"/{shard_database(shard)}", dsn
            assert parse_qs(parts.query) == {"target_session_attrs": ["read-write"]}, dsn
            members = [h.split(":")[0] for h in hosts.split(",")]
            assert members == _members_of(shard) and len(members) >= 2, dsn
            assert all(h.endswith(":5432") for h in hosts.split(",")), dsn
            assert all(m in services for m in members)
        # the password comes from PGPASSWORD, which is POSTGRES_PASSWORD
        password = REQUIRED.fullmatch(_env(service)["PGPASSWORD"])
        assert password and password["name"] == "POSTGRES_PASSWORD", name


def test_the_gateway_names_every_member_for_the_operators_view() -> None:
    """GET /admin/v1/ha (the console's members table) asks each member's REST API that
    QUICKPAY_PATRONI_MEMBERS names: every member of every shard, at Patroni's REST port."""
    from gateway.patroni import parse_members

    (gateway,) = [s for s in _quickpay_services().values() if s["command"][0] == "gateway-worker"]
    shards = len(_env(gateway)["QUICKPAY_SHARD_ADDRS"].split(","))
    named = parse_members(_env(gateway)["QUICKPAY_PATRONI_MEMBERS"], shards)
    rest_port = _patroni_member().REST_PORT
    for shard in range(shards):
        assert named[shard] == [(m, m, rest_port) for m in _members_of(shard)], shard


def test_monitor_and_notifier_get_every_shard() -> None:
    shards = {_env(s)["QUICKPAY_SHARD"] for s in _members().values()}
    for name in ("monitor", "notifier"):
        assert len(_dsn_args(_services()[name]["command"])) == len(shards)


# ---- secrets ----------------------------------------------------------------------------------
def test_every_secret_is_a_required_reference_to_env() -> None:
    text = COMPOSE_HA.read_text()
    seen = set()
    for match in REFERENCE.finditer(text):
        if match["name"] in SECRETS:
            assert match["op"] == ":?" and "quickpay secrets" in match["rest"], (
                f"{match[0]!r}: a secret must be ${{{match['name']}:?run quickpay secrets ...}}"
            )
            seen.add(match["name"])
    assert seen == SECRETS, f"secrets never used: {SECRETS - seen}"


def test_secret_variables_are_given_only_as_references() -> None:
    for name, service in _services().items():
        for key, value in _env(service).items():
            if key in SECRETS or key == "PGPASSWORD" or "PASSWORD" in key or "SECRET" in key or "TOKEN" in key:
                match = REQUIRED.fullmatch(value)
                assert match and match["name"] in SECRETS, f"{name}: {key} is {value!r}"
                if key in SECRETS:
                    assert match["name"] == key, f"{name}: {key} takes {match['name']}"
    assert "change-me" not in COMPOSE_HA.read_text()


def test_the_smoke_makes_every_secret_the_file_needs() -> None:
    block = re.search(r"^SECRETS=\((.*?)\)", SMOKE.read_text(), re.M | re.S)
    assert block, "scripts/compose-ha-smoke has no SECRETS=(...) list"
    assert set(block[1].split()) == SECRETS


# ---- network and hardening ---------------------------------------------------------------------
def test_only_the_gateway_is_published_and_only_on_loopback() -> None:
    services = _services()
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    # Prometheus's UI too, in the opt-in `prometheus` profile (tests/test_prometheus.py).
    assert set(published) == {"gateway", "prometheus"}, published
    assert all(str(p).startswith("127.0.0.1:") for ports in published.values() for p in ports)
    assert _load(COMPOSE_HA)["networks"]["backend"].get("internal") is True
    for name, service in services.items():
        expected = ["backend", "frontend"] if name in ("gateway", "notifier", "prometheus") else ["backend"]
        assert sorted(service["networks"]) == expected, name
    assert "etcd" in services and len(_members()) >= 4


@pytest.mark.parametrize("name", sorted(["etcd", *_members()]))
def test_database_and_etcd_services_are_hardened(name: str) -> None:
    service = _services()[name]
    assert service["restart"] == "always"
    assert service.get("read_only") is True and service.get("tmpfs") == ["/tmp"]
    assert "ALL" in service.get("cap_drop", [])
    assert "no-new-privileges:true" in service.get("security_opt", [])
    assert "ports" not in service
    assert service["healthcheck"]["test"][0] == "CMD"
    volumes = service.get("volumes", [])
    assert len(volumes) == 1 and volumes[0].split(":")[0] in _load(COMPOSE_HA)["volumes"]


def test_every_service_gives_up_quickly_on_a_name_docker_does_not_know() -> None:
    # a stopped member's name: glibc's default (2 x 5 s) delayed each failover by ~10 s
    for name, service in _services().items():
        assert "timeout:1" in service.get("dns_opt", []), name


def test_each_member_has_its_own_volume() -> None:
    volumes = [s["volumes"][0].split(":")[0] for s in _members().values()]
    assert sorted(volumes) == sorted(_members())


# ---- Patroni: the settings of `quickpay up --ha` -------------------------------------------------
@pytest.mark.parametrize("name", sorted(_members()))
def test_member_configuration_carries_dcs_settings(name: str) -> None:
    service = _members()[name]
    env = _interpolated_env(service)
    shard = int(env["QUICKPAY_SHARD"])
    members = int(env["QUICKPAY_HA_MEMBERS"])
    assert members == len(_members_of(shard)), f"QUICKPAY_HA_MEMBERS is {members}, the file has {_members_of(shard)}"
    config = _patroni_member().member_config(env)
    assert config["bootstrap"]["dcs"] == dcs_settings(members)
    assert config["bootstrap"]["dcs"]["synchronous_mode"] is True
    assert config["bootstrap"]["dcs"]["synchronous_mode_strict"] is True
    assert config["scope"] == f"{SCOPE_PREFIX}{shard}" and config["namespace"] == NAMESPACE
    assert config["name"] == name == env["QUICKPAY_HA_MEMBER"]
    assert config["postgresql"]["connect_address"] == f"{name}:5432"
    assert config["restapi"]["connect_address"] == f"{name}:8008"
    assert config["etcd3"]["hosts"] == ["etcd:2379"] and config["etcd3"]["username"] == "root"
    assert config["etcd3"]["password"] == "secret-of-QUICKPAY_ETCD_PASSWORD"
    auth = config["postgresql"]["authentication"]
    assert auth["superuser"] == {"username": "postgres", "password": "secret-of-POSTGRES_PASSWORD"}
    assert auth["replication"] == {"username": REPLICATION_USER, "password": "secret-of-QUICKPAY_REPLICATION_PASSWORD"}
    assert config["restapi"]["authentication"] == {
        "username": REST_USER,
        "password": "secret-of-QUICKPAY_PATRONI_PASSWORD",
    }
    # every connection authenticates with a password; nothing is trusted
    assert all(line.split()[-1] == "scram-sha-256" for line in config["postgresql"]["pg_hba"])
    assert "post-bootstrap" in config["bootstrap"]["post_bootstrap"]


def test_member_configuration_follows_the_local_ha_stack(tmp_path: Path) -> None:
    """Everything but addresses, paths and secrets is what `quickpay up --ha` gives a member."""
    cluster = HaCluster(tmp_path, shards=2, members=2)
    cluster.dir.mkdir(parents=True)
    cluster.etcd_client_port = 2379
    local = cluster.patroni_config(Member(shard=0, name="shard0-a", pg_port=5432, rest_port=8008))
    compose = _patroni_member().member_config(_interpolated_env(_members()["pg0a"]))

    def shape(value: Any) -> Any:
        return {k: shape(v) for k, v in value.items()} if isinstance(value, dict) else type(value).__name__

    expected = shape(local)
    # The one addition: compose creates the shard's database in Patroni's post_bootstrap hook,
    # where `up --ha` creates it itself once the leader commits.
    expected["bootstrap"]["post_bootstrap"] = "str"
    assert shape(compose) == expected
    assert compose["bootstrap"]["dcs"] == local["bootstrap"]["dcs"]
    assert compose["bootstrap"]["initdb"] == local["bootstrap"]["initdb"]
    for key in ("log", "tags"):
        assert compose[key] == local[key], key
    for key in ("create_replica_methods", "basebackup", "use_unix_socket"):
        assert compose["postgresql"][key] == local["postgresql"][key], key
    assert compose["postgresql"]["parameters"].keys() == local["postgresql"]["parameters"].keys()
    for role in ("superuser", "replication", "rewind"):
        assert (
            compose["postgresql"]["authentication"][role]["username"]
            == local["postgresql"]["authentication"][role]["username"]
        ), role


def test_member_configuration_refuses_a_missing_secret() -> None:
    env = _interpolated_env(_members()["pg0a"])
    module = _patroni_member()
    for name in module.SECRET_VARIABLES:
        with pytest.raises(SystemExit, match=name):
            module.member_config({k: v for k, v in env.items() if k != name})
    # and Patroni is started without them in its environment
    assert set(module.SECRET_VARIABLES) == {k for k in _env(_members()["pg0a"]) if k in SECRETS}


# ---- images and scripts --------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("service", ["etcd", "pg0a"])
def test_built_images_run_as_non_root_and_copy_what_exists(service: str) -> None:
    build = _services()[service]["build"]
    context = ROOT / build["context"]
    dockerfile = context / build["dockerfile"]
    instructions = _instructions(dockerfile)
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for op, arg in instructions:
        if op == "COPY" and "--from" not in arg:
            for source in arg.split()[:-1]:
                if not any(c in source for c in "*?["):
                    assert (context / source).exists(), f"{dockerfile.name} copies {source}, missing from {context}"
    assert set(build["args"]) <= {arg.split("=")[0] for op, arg in instructions if op == "ARG"}


def test_scripts_parse_and_are_executable() -> None:
    for script in (SMOKE, HA_DIR / "etcd-entrypoint"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
    helper = subprocess.run(
        [sys.executable, str(HA_DIR / "ha_smoke.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert helper.returncode == 0 and "outage" in helper.stdout, helper.stderr


def test_what_the_smoke_takes_from_compose_smoke_is_there() -> None:
    names = re.search(r"^FROM_COMPOSE_SMOKE=\((.*?)\)", SMOKE.read_text(), re.M | re.S)
    assert names, "scripts/compose-ha-smoke has no FROM_COMPOSE_SMOKE=(...) list"
    source = (ROOT / "scripts" / "compose-smoke").read_text()
    for name in names[1].split():
        assert re.search(rf"^{name}(\(\) \{{|=)", source, re.M), f"scripts/compose-smoke no longer defines {name}"


def test_roles_summarises_patronis_cluster_view() -> None:
    view = (
        '{"members": [{"name": "pg0b", "role": "sync_standby", "state": "streaming", "timeline": 2, "lag": 0},'
        ' {"name": "pg0a", "role": "leader", "state": "running", "timeline": 2}]}'
    )
    result = subprocess.run(
        [sys.executable, str(HA_DIR / "ha_smoke.py"), "roles"], input=view, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.splitlines() == ["pg0a leader running 2 0", "pg0b sync_standby streaming 2 0"]
