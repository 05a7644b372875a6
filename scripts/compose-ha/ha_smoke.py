"""The HTTP and Patroni half of scripts/compose-ha-smoke, around scripts/compose_smoke.py (whose
`setup` and `pay` steps it shares, with their state file). Standard library only, like it.

    ha_smoke.py roles < CLUSTER_JSON
        Patroni's /cluster answer as one line per member: name role state timeline lag
    ha_smoke.py --url URL --state FILE token
        Before the drill: an access token for the partner, kept in the state file (issuing one
        reads the partner from its shard, which may be the one that is about to fail).
    ha_smoke.py --url URL --state FILE outage
        While shard 0 has lost a member: a same-shard payment on shard 1 must be acknowledged
        (other shards do not notice); one on shard 0 must not be (strict synchronous replication
        with no standby left: nothing is acknowledged that a standby has not flushed). The shard 0
        payment's key is kept in the state file.
    ha_smoke.py --url URL --state FILE retry
        Once shard 0 has its standby again: the shard 0 payment sent during the outage, again
        with its key. It is acknowledged now, as one payment (whether or not the first attempt
        reached the journal), and joins the payments whose balances `compose_smoke.py pay` checks.
    ha_smoke.py --url URL --state FILE members [--leader SHARD:MEMBER ...]
        The operator's view (GET /admin/v1/ha, the console's database members table) from the
        gateway, which QUICKPAY_PATRONI_MEMBERS points at every member's REST API: every shard
        has a leader and every member answered, with the roles Patroni gives (--leader: shard 0's
        leader is the member the drill promoted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/: compose_smoke
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # the repository: quickpay

from compose_smoke import AMOUNT, COMPLETED, IN_PROCESS, _settled, fail, log

from quickpay.httpclient import Api, ApiCallError

OUTAGE_TIMEOUT_S = 20.0  # the gateway answers 503 after its 10 s shard call timeout


def roles(cluster: dict[str, Any]) -> str:
    return "\n".join(
        f"{m['name']} {m['role']} {m['state']} {m.get('timeline', '-')} {m.get('lag', 0)}"
        for m in sorted(cluster.get("members", []), key=lambda m: str(m["name"]))
    )


def _payment(state: dict[str, Any], shard: int, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A same-shard payment from the shard's debtor: (request body, the entry `pay` checks)."""
    debtor, creditor = state["accounts"][str(shard)]
    body = {
        "agreement_id": state["agreements"][str(shard)],
        "amount": str(AMOUNT),
        "currency": "CNY",
        "creditor_account": creditor,
        "reference": f"ha smoke {key}",
    }
    return body, {"debtor": debtor, "creditor": creditor, "amount": str(AMOUNT)}


def token(url: str, state_file: Path) -> None:
    state = json.loads(state_file.read_text())
    state["token"] = Api(url, timeout_s=30).token(state["client_id"], state["client_secret"])
    state_file.write_text(json.dumps(state))


def outage(url: str, state_file: Path) -> None:
    state = json.loads(state_file.read_text())
    once = Api(url, timeout_s=OUTAGE_TIMEOUT_S)  # no retries: this is about the first answer
    token = state["token"]

    body, entry = _payment(state, 1, "ha-outage-s1")
    started = time.monotonic()
    payment = once.request(
        "POST", "/v1/quick-payments", body, token=token, headers={"x-idempotency-key": "ha-outage-s1"}
    )
    if payment["status"] != COMPLETED:
        fail(f"shard 1 did not complete a payment while shard 0 was degraded: {payment}")
    state["payments"].append({**entry, "payment_id": payment["payment_id"]})
    log(f"outage: shard 1 acknowledged {payment['payment_id']} in {time.monotonic() - started:.2f}s")

    body, entry = _payment(state, 0, "ha-outage-s0")
    started = time.monotonic()
    try:
        answer = once.request(
            "POST", "/v1/quick-payments", body, token=token, headers={"x-idempotency-key": "ha-outage-s0"}
        )
    except ApiCallError as exc:
        outcome = f"HTTP {exc.status} {exc.body.get('code') if isinstance(exc.body, dict) else exc.body}"
        if exc.status != 503:
            fail(f"shard 0 answered a payment during the outage with {outcome} (expected 503)")
    except OSError as exc:  # no answer within OUTAGE_TIMEOUT_S: not acknowledged either
        outcome = f"no answer ({type(exc).__name__})"
    else:
        fail(f"shard 0 acknowledged a payment with no synchronous standby left: {answer}")
    state["outage"] = {"body": body, "entry": entry, "key": "ha-outage-s0"}
    state_file.write_text(json.dumps(state))
    log(f"outage: shard 0 did not acknowledge a payment ({outcome} after {time.monotonic() - started:.2f}s)")


def retry(url: str, state_file: Path) -> None:
    state = json.loads(state_file.read_text())
    outage_payment = state.pop("outage")
    # 503 means "outcome unknown, retry with the same key": what a partner does after the outage.
    api = Api(url, timeout_s=30, unavailable_retries=20)
    token = api.token(state["client_id"], state["client_secret"])
    payment = api.request(
        "POST",
        "/v1/quick-payments",
        outage_payment["body"],
        token=token,
        headers={"x-idempotency-key": outage_payment["key"]},
    )
    if payment["status"] not in (COMPLETED, IN_PROCESS):
        fail(f"the outage payment's retry was not accepted: {payment}")
    payment = _settled(api, token, payment["payment_id"])
    again = api.request(
        "POST",
        "/v1/quick-payments",
        outage_payment["body"],
        token=token,
        headers={"x-idempotency-key": outage_payment["key"]},
    )
    if again["payment_id"] != payment["payment_id"]:
        fail(f"a second retry of the outage payment made a new payment: {again} vs {payment}")
    state["payments"].append({**outage_payment["entry"], "payment_id": payment["payment_id"]})
    state_file.write_text(json.dumps(state))
    log(f"retry: the outage payment is {payment['payment_id']} {payment['status']}, once")


def members(url: str, state_file: Path, leaders: list[str]) -> None:
    state = json.loads(state_file.read_text())
    view = Api(url, timeout_s=30).request("GET", "/admin/v1/ha", token=state["admin_token"])
    if view.get("mode") != "patroni":
        fail(f"/admin/v1/ha: mode {view.get('mode')!r} ({view.get('error')}), not patroni")
    by_shard = {s["shard"]: s for s in view["shards"]}
    for shard in (0, 1):
        found = by_shard.get(shard) or fail(f"/admin/v1/ha lists no shard {shard}: {view}")
        rows = [(m["name"], m["role"], m["state"], m["lag_bytes"], m["api"]) for m in found["members"]]
        log(f"/admin/v1/ha shard {shard}: leader {found['leader']}, {rows}")
        if not found["leader"] or any(m["api"] != "answered" for m in found["members"]):
            fail(f"/admin/v1/ha shard {shard}: no leader, or a member did not answer: {rows}")
        if sorted(m["role"] for m in found["members"]) != ["leader", "sync_standby"]:
            fail(f"/admin/v1/ha shard {shard}: not one leader and one synchronous standby: {rows}")
    for expected in leaders:
        shard, _, member = expected.partition(":")
        if by_shard[int(shard)]["leader"] != member:
            fail(f"/admin/v1/ha: shard {shard}'s leader is {by_shard[int(shard)]['leader']}, not {member}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--state", type=Path)
    parser.add_argument("step", choices=["roles", "token", "outage", "retry", "members"])
    parser.add_argument("--leader", action="append", default=[], help="members: SHARD:MEMBER expected to lead")
    args = parser.parse_args()
    if args.step == "roles":
        print(roles(json.load(sys.stdin)))
        return 0
    if not args.url or not args.state:
        parser.error(f"{args.step} needs --url and --state")
    try:
        if args.step == "members":
            members(args.url, args.state, args.leader)
            return 0
        {"token": token, "outage": outage, "retry": retry}[args.step](args.url, args.state)
    except ApiCallError as exc:
        fail(f"HTTP {exc.status}: {exc.body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
