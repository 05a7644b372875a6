"""The CLI fails loudly and usefully: `quickpay up` refuses bad configuration (shard and
worker counts, port, rules file, a changed shard count) with a clear message before
starting anything; `quickpay check` refuses a directory without state; and `check`
detects a ledger corrupted behind the workers' back (exit 1, naming the account), and
passes again once the corruption is undone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import ROOT, Stack, start_stack, stop_stack


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_")}
    return subprocess.run(
        [sys.executable, "-m", "quickpay.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shards", "0"], "--shards must be between 1 and 64"),
        (["--shards", "65"], "--shards must be between 1 and 64"),
        (["--workers", "0"], "--workers must be between 1 and 64"),
        (["--port", "70000"], "--port must be a TCP port"),
        (["--rules", "/nonexistent/x.rules"], "no such file"),
        (["--batch-items-max", "0"], "--batch-items-max must be between 1 and 1000"),
        (["--batch-items-max", "1001"], "--batch-items-max must be between 1 and 1000"),
    ],
)
def test_up_rejects_bad_config(tmp_path: Path, flags: list[str], message: str) -> None:
    state = tmp_path / "state"
    result = cli("up", "--state-dir", str(state), "--no-monitor", *flags, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (state / "pg").exists()  # refused before starting PostgreSQL


def test_up_rejects_a_changed_shard_count(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "topology.json").write_text(json.dumps({"shards": 2}))
    result = cli("up", "--state-dir", str(state), "--shards", "3", "--port", "1", timeout=60)
    assert result.returncode != 0
    assert "created with --shards 2" in result.stderr and "Traceback" not in result.stderr
    assert not (state / "pg").exists()


def test_up_rejects_non_integer_shards(tmp_path: Path) -> None:
    result = cli("up", "--state-dir", str(tmp_path), "--shards", "two", timeout=60)
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_check_on_empty_dir(tmp_path: Path) -> None:
    result = cli("check", "--state-dir", str(tmp_path), timeout=60)
    assert result.returncode != 0
    assert "holds no quickpay state" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def stopped_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A stack that made some payments (same- and cross-shard) and was shut down."""
    stack = start_stack(tmp_path_factory.mktemp("cli-stack"))
    try:
        partner = stack.new_partner("CLI")
        debtor = stack.new_customer(partner, shard=0, funding="30.00")
        creditors = [stack.new_account(shard=0), stack.new_account(shard=1)]
        for creditor in (*creditors, partner["settlement_account"]):
            assert stack.pay(partner, debtor["agreement_id"], creditor, "1.00").status == 201
        stack.debtor = debtor["account"]  # type: ignore[attr-defined]
    finally:
        stop_stack(stack)
    yield stack
    from quickpay.embedded_pg import EmbeddedPostgres

    EmbeddedPostgres(stack.state_dir).stop()


async def _update_balance(stack: Stack, account: str, shard: int, delta: int) -> None:
    from quickpay.embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(stack.state_dir)
    pg.start()
    try:
        conn = await asyncpg.connect(stack.dsn(shard))
        try:
            status = await conn.execute(
                "UPDATE accounts SET balance_minor = balance_minor + $2 WHERE id = $1", account, delta
            )
            assert status == "UPDATE 1"
        finally:
            await conn.close()
    finally:
        pg.stop()


def test_check_passes_then_detects_corruption(stopped_stack: Stack) -> None:
    from quickpay.embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(stopped_stack.state_dir)
    assert not pg.is_running()
    ok = cli("check", "--state-dir", str(stopped_stack.state_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK" in ok.stdout
    assert not pg.is_running()  # check stops the PostgreSQL it started
    account = stopped_stack.debtor  # type: ignore[attr-defined]
    asyncio.run(_update_balance(stopped_stack, account, 0, 1))
    try:
        bad = cli("check", "--state-dir", str(stopped_stack.state_dir))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "FAILED" in bad.stdout and account in bad.stdout
        as_json = cli("check", "--state-dir", str(stopped_stack.state_dir), "--json")
        assert as_json.returncode == 1
        report = json.loads(as_json.stdout)
        assert report["ok"] is False and any(account in p for p in report["problems"])
        assert any("balances sum to 1" in p for p in report["problems"])
    finally:
        asyncio.run(_update_balance(stopped_stack, account, 0, -1))
    again = cli("check", "--state-dir", str(stopped_stack.state_dir))
    assert again.returncode == 0, again.stdout + again.stderr


def test_commands_without_a_stack_say_what_to_do(tmp_path: Path) -> None:
    """No traceback for a new user who runs a command before `quickpay up`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKPAY_")}
    for argv, expected in (
        (["fraud", "show", "--state-dir", str(tmp_path)], "no admin token"),
        (["seed", "--state-dir", str(tmp_path)], "no stack state"),
        (["bench", "--quick", "--shards", "0", "--out", str(tmp_path / "b")], "--shards must be between"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "quickpay.cli", *argv], capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode != 0, argv
        assert expected in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr, (argv, result.stderr)


@pytest.mark.parametrize("version", ["abcdef12\n", "abcdef12 ", "ABCDEF1²", "abc"])
def test_fraud_activate_refuses_a_version_that_is_not_whole_hex(tmp_path: Path, version: str) -> None:
    # A version is matched whole: "^...$" let "abcdef12\n" through, since "$" also
    # matches before a trailing newline.
    (tmp_path / "admin.token").write_text("t" * 40)
    result = cli("fraud", "activate", version, "--state-dir", str(tmp_path), "--url", "http://127.0.0.1:9", timeout=60)
    assert result.returncode != 0
    assert "is not a rule-set version" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_batch_bound_is_the_documents() -> None:
    from gateway.schemas import BATCH_ITEMS_MAX
    from quickpay.cli import BATCH_ITEMS_MAX_DEFAULT

    assert BATCH_ITEMS_MAX_DEFAULT == BATCH_ITEMS_MAX
