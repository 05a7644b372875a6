"""docker-compose.yml cannot drift from the code: every quickpay service command names a
real `quickpay` subcommand with flags its argparse parser accepts (and the parse
succeeds), shard services agree with QUICKPAY_DSNS/QUICKPAY_SHARD_ADDRS, and every
QUICKPAY_* variable the file sets is read somewhere in the Python sources."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from quickpay.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PACKAGES = ("quickpay", "gateway", "ledger", "fraud", "loadtest")


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _quickpay_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {name: svc for name, svc in services.items() if "build" in svc}


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_has_quickpay_services() -> None:
    services = _quickpay_services()
    assert {"shard0", "shard1", "gateway"} <= set(services)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "quickpay" in dockerfile   # the image's entrypoint runs the CLI the commands feed


@pytest.mark.parametrize("name", sorted(_quickpay_services()))
def test_service_command_parses(name: str) -> None:
    service = _quickpay_services()[name]
    command = service["command"]
    if isinstance(command, str):
        command = command.split()
    parser = build_parser()
    subcommands = _subparsers(parser)
    assert command[0] in subcommands, f"{name}: unknown subcommand {command[0]!r}"
    sub = subcommands[command[0]]
    known_flags = {opt for action in sub._actions for opt in action.option_strings}
    for token in command[1:]:
        if token.startswith("--"):
            assert token.split("=", 1)[0] in known_flags, f"{name}: {command[0]} has no flag {token}"
    args = parser.parse_args(command)        # exits (SystemExit) on anything argparse refuses
    assert args.command == command[0] and callable(args.func)


def test_shard_services_match_environment() -> None:
    services = _quickpay_services()
    parser = build_parser()
    for name, service in services.items():
        if service["command"][0] != "shard-worker":
            continue
        env = _env(service)
        args = parser.parse_args(service["command"])
        dsns = env["QUICKPAY_DSNS"].split(",")
        addrs = env["QUICKPAY_SHARD_ADDRS"].split(",")
        assert len(dsns) == len(addrs) == args.shards, name
        assert f"quickpay_shard_{args.shard}" in dsns[args.shard]
        # this shard's entry in the address list is the service itself, on the port it listens on
        host_port = addrs[args.shard].removeprefix("tcp:")
        assert host_port.split(":")[0] == name
        assert args.listen.rsplit(":", 1)[1] == host_port.rsplit(":", 1)[1]
        for dep in service.get("depends_on", {}):
            assert f"@{dep}:" in dsns[args.shard]


def _python_sources() -> str:
    texts = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_every_quickpay_env_var_is_read() -> None:
    text = COMPOSE.read_text()
    variables = set(re.findall(r"\bQUICKPAY_[A-Z0-9_]+\b", text))
    assert variables, "compose sets no QUICKPAY_* variables"
    sources = _python_sources()
    for variable in sorted(variables):
        assert re.search(rf"""["']{variable}["']""", sources), f"{variable} is set in compose but never read"
        # and it is really read from the environment (not only mentioned in help text)
    reads = "\n".join(line for line in sources.splitlines() if "environ" in line or "ENV_" in line)
    constants = dict(re.findall(r"""^(ENV_[A-Z_]+)\s*=\s*["'](QUICKPAY_[A-Z_]+)["']""", sources, re.M))
    for variable in sorted(variables):
        named = [const for const, value in constants.items() if value == variable]
        assert variable in reads or any(const in reads for const in named), \
            f"{variable} is never read from os.environ"


def _dockerfile_copy_sources() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts and parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
            sources.extend(parts[1:-1])
    return sources


@pytest.mark.parametrize("source", [
    pytest.param(s, marks=pytest.mark.xfail(
        s == "README.md" and not (ROOT / s).exists(), reason="the top-level README.md is not written yet",
        strict=True)) for s in _dockerfile_copy_sources()])
def test_dockerfile_copy_sources_exist(source: str) -> None:
    # `docker compose build` fails on a COPY of a missing file
    assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
