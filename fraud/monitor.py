"""Post-event monitor core: patterns that only show across many committed transfers.

Pure: `MonitorEngine.process(event)` takes one committed transfer and returns alerts.
The DB loop that feeds it (at-least-once, in (shard, seq) order) lives in the ledger.

Restart story (both are provided; the first is the primary mechanism):
  * Alert ids are deterministic: sha256(rule | account | first triggering transfer id).
    Re-processing the same events yields the same ids, so the loop can insert alerts
    with ON CONFLICT (alert_id) DO NOTHING.
  * `state_dict()` / `MonitorEngine.from_state()` snapshot the whole state as JSON-able
    data; saving it in the same transaction as the feed cursor makes a restart resume
    exactly, including which episodes are already alerted.

Rules:
  fan_in       at least `fan_in_distinct_debtors` distinct debtors paid one creditor
               within `fan_in_window_s`. One alert per episode: the episode opens when
               the count reaches the threshold and closes when an event for that
               creditor finds the count (after expiry) below it again.
  pass_through an account that received money within `pass_through_window_s` sends
               out >= `pass_through_ratio_pct` % of it within that window (only
               outflows after the earliest inflow still in the window count), and the
               inflow is at least `pass_through_min_inflow_minor`. Same episode rule.

Refunds (kind "refund") are their own kind: money a partner returns to the customer it
came from. They never count toward fan_in (a partner's refund is not one more distinct
debtor paying the customer), but they are inflows for pass_through: a refund forwarded
at once to other accounts is the cash-out a refund scheme ends in.

Window semantics match the filter: at time t an event is inside when at_ms > t - W*1000.
Memory: at most `max_accounts` accounts per rule (least recently updated evicted, which
also forgets its episode) and `max_events_per_account` events per account (oldest dropped).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Alert", "MonitorEngine", "TransferEvent"]

FAN_IN = "fan_in"
PASS_THROUGH = "pass_through"
STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class TransferEvent:
    shard: int
    seq: int
    transfer_id: str
    debit_account: str
    credit_account: str
    amount_minor: int
    at_ms: int
    kind: str = "payment"  # "payment" | "refund"


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    rule: str
    account: str
    at_ms: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Field by field, like fraud/decision.py's RuleHit: not dataclasses.asdict, which deep-copies.
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "account": self.account,
            "at_ms": self.at_ms,
            "details": dict(self.details),
        }


def alert_id_for(rule: str, account: str, transfer_id: str) -> str:
    digest = hashlib.sha256(f"{rule}|{account}|{transfer_id}".encode()).hexdigest()
    return f"al_{digest[:32]}"


class _FanInState:
    __slots__ = ("alerted", "debtors")

    def __init__(self) -> None:
        self.debtors: OrderedDict[str, int] = OrderedDict()  # debtor -> last paid at_ms
        self.alerted = False


class _FlowState:
    __slots__ = ("alerted", "inflow_minor", "inflows", "outflows")

    def __init__(self) -> None:
        self.inflows: deque[tuple[int, int]] = deque()  # (at_ms, amount_minor)
        self.outflows: deque[tuple[int, int]] = deque()
        self.inflow_minor = 0
        self.alerted = False


class MonitorEngine:
    def __init__(
        self,
        fan_in_distinct_debtors: int,
        fan_in_window_s: int,
        pass_through_window_s: int,
        pass_through_ratio_pct: int,
        *,
        pass_through_min_inflow_minor: int = 1,
        exempt_accounts: frozenset[str] | set[str] = frozenset(),
        max_accounts: int = 100_000,
        max_events_per_account: int = 1_000,
    ) -> None:
        if fan_in_distinct_debtors < 2:
            raise ValueError("fan_in_distinct_debtors must be at least 2")
        if fan_in_window_s < 1 or pass_through_window_s < 1:
            raise ValueError("fan_in_window_s and pass_through_window_s must be at least 1 second")
        if not 1 <= pass_through_ratio_pct <= 1_000:
            raise ValueError("pass_through_ratio_pct must be in 1..1000")
        if max_accounts < 1 or max_events_per_account < 1:
            raise ValueError("max_accounts and max_events_per_account must be at least 1")
        self.fan_in_distinct_debtors = fan_in_distinct_debtors
        self.fan_in_window_s = fan_in_window_s
        self.pass_through_window_s = pass_through_window_s
        self.pass_through_ratio_pct = pass_through_ratio_pct
        self.pass_through_min_inflow_minor = pass_through_min_inflow_minor
        # Settlement and fee accounts legitimately fan in and pass money through.
        self.exempt_accounts = frozenset(exempt_accounts)
        self.max_accounts = max_accounts
        self.max_events_per_account = max_events_per_account
        self._fan_in: OrderedDict[str, _FanInState] = OrderedDict()
        self._flows: OrderedDict[str, _FlowState] = OrderedDict()

    def process(self, event: TransferEvent) -> list[Alert]:
        alerts: list[Alert] = []
        if event.credit_account not in self.exempt_accounts:
            if event.kind != "refund":
                alert = self._process_fan_in(event)
                if alert is not None:
                    alerts.append(alert)
            self._record_inflow(event)
        if event.debit_account not in self.exempt_accounts:
            alert = self._process_outflow(event)
            if alert is not None:
                alerts.append(alert)
        return alerts

    # -- fan-in ----------------------------------------------------------------------

    def _touch(self, table: OrderedDict[str, Any], account: str, factory: type) -> Any:
        state = table.get(account)
        if state is None:
            state = factory()
            table[account] = state
            if len(table) > self.max_accounts:
                table.popitem(last=False)
        else:
            table.move_to_end(account)
        return state

    def _process_fan_in(self, event: TransferEvent) -> Alert | None:
        state: _FanInState = self._touch(self._fan_in, event.credit_account, _FanInState)
        cutoff_ms = event.at_ms - self.fan_in_window_s * 1000
        debtors = state.debtors
        while debtors:
            oldest, last_ms = next(iter(debtors.items()))
            if last_ms > cutoff_ms:
                break
            del debtors[oldest]
        if len(debtors) < self.fan_in_distinct_debtors:
            state.alerted = False  # the previous episode (if any) has ended
        if event.debit_account in debtors:
            debtors.move_to_end(event.debit_account)
        debtors[event.debit_account] = max(event.at_ms, debtors.get(event.debit_account, event.at_ms))
        if len(debtors) > self.max_events_per_account:
            debtors.popitem(last=False)
        if state.alerted or len(debtors) < self.fan_in_distinct_debtors:
            return None
        state.alerted = True
        return Alert(
            alert_id=alert_id_for(FAN_IN, event.credit_account, event.transfer_id),
            rule=FAN_IN,
            account=event.credit_account,
            at_ms=event.at_ms,
            details={
                "distinct_debtors": len(debtors),
                "threshold": self.fan_in_distinct_debtors,
                "window_s": self.fan_in_window_s,
                "triggering_transfer_id": event.transfer_id,
                "shard": event.shard,
                "seq": event.seq,
            },
        )

    # -- pass-through ----------------------------------------------------------------

    def _expire(self, state: _FlowState, at_ms: int) -> None:
        cutoff_ms = at_ms - self.pass_through_window_s * 1000
        while state.inflows and state.inflows[0][0] <= cutoff_ms:
            state.inflow_minor -= state.inflows.popleft()[1]
        while state.outflows and state.outflows[0][0] <= cutoff_ms:
            state.outflows.popleft()

    def _ratio_met(self, state: _FlowState) -> tuple[bool, int]:
        if not state.inflows or state.inflow_minor < self.pass_through_min_inflow_minor:
            return False, 0
        first_inflow_ms = state.inflows[0][0]
        outflow_minor = sum(amount for at_ms, amount in state.outflows if at_ms >= first_inflow_ms)
        return outflow_minor * 100 >= self.pass_through_ratio_pct * state.inflow_minor, outflow_minor

    def _record_inflow(self, event: TransferEvent) -> None:
        state: _FlowState = self._touch(self._flows, event.credit_account, _FlowState)
        self._expire(state, event.at_ms)
        state.inflows.append((event.at_ms, event.amount_minor))
        state.inflow_minor += event.amount_minor
        if len(state.inflows) > self.max_events_per_account:
            state.inflow_minor -= state.inflows.popleft()[1]
        if state.alerted and not self._ratio_met(state)[0]:
            state.alerted = False  # fresh money diluted the ratio: the episode is over

    def _process_outflow(self, event: TransferEvent) -> Alert | None:
        state: _FlowState | None = self._flows.get(event.debit_account)
        if state is None:
            return None  # never received anything we remember: nothing passes through
        self._flows.move_to_end(event.debit_account)
        self._expire(state, event.at_ms)
        state.outflows.append((event.at_ms, event.amount_minor))
        if len(state.outflows) > self.max_events_per_account:
            state.outflows.popleft()
        met, outflow_minor = self._ratio_met(state)
        if not met:
            state.alerted = False
            return None
        if state.alerted:
            return None
        state.alerted = True
        return Alert(
            alert_id=alert_id_for(PASS_THROUGH, event.debit_account, event.transfer_id),
            rule=PASS_THROUGH,
            account=event.debit_account,
            at_ms=event.at_ms,
            details={
                "inflow_minor": state.inflow_minor,
                "outflow_minor": outflow_minor,
                "ratio_pct": self.pass_through_ratio_pct,
                "window_s": self.pass_through_window_s,
                "triggering_transfer_id": event.transfer_id,
                "shard": event.shard,
                "seq": event.seq,
            },
        )

    # -- snapshots -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of all state (not of the configuration)."""
        return {
            "format": STATE_FORMAT,
            "fan_in": [
                [account, list(state.debtors.items()), state.alerted] for account, state in self._fan_in.items()
            ],
            "flows": [
                [account, [list(x) for x in state.inflows], [list(x) for x in state.outflows], state.alerted]
                for account, state in self._flows.items()
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], **config: Any) -> MonitorEngine:
        """Rebuild from `state_dict()`; `config` are the constructor arguments."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported monitor state format {state.get('format')!r}")
        engine = cls(**config)
        for account, debtors, alerted in state["fan_in"]:
            fan_in = _FanInState()
            fan_in.debtors = OrderedDict((str(d), int(ms)) for d, ms in debtors)
            fan_in.alerted = bool(alerted)
            engine._fan_in[account] = fan_in
        for account, inflows, outflows, alerted in state["flows"]:
            flow = _FlowState()
            flow.inflows = deque((int(ms), int(amount)) for ms, amount in inflows)
            flow.outflows = deque((int(ms), int(amount)) for ms, amount in outflows)
            flow.inflow_minor = sum(amount for _, amount in flow.inflows)
            flow.alerted = bool(alerted)
            engine._flows[account] = flow
        return engine
