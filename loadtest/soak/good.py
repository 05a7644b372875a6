"""The well-behaved partners' operations: payments, batches, refunds, agreements, reads, the
events feed, reconciliation, webhooks; each with the answers it expects."""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

from loadtest.soak.client import Client, Partner


class GoodTraffic(Client):
    # -- well-behaved operations
    def _payment_body(self, partner: Partner, reference: str = "soak") -> dict[str, Any]:
        agreement_id, _ = partner.agreements[self.rng.randrange(len(partner.agreements))]
        return {
            "agreement_id": agreement_id,
            "amount": "1.00",
            "currency": "CNY",
            "creditor_account": partner.settlement_account,
            "reference": reference,
        }

    async def good_op(self, partner: Partner, op: str, scheduled: float) -> None:
        if (op == "refund" and not partner.payments) or (op == "get_payment" and not partner.payments):
            op = "pay"
        if op == "pay":
            reply = await self.request(
                "POST",
                "/v1/quick-payments",
                partner,
                json_body=self._payment_body(partner),
                headers={"x-idempotency-key": uuid.uuid4().hex},
            )
            if self.record(partner, op, reply, scheduled, (201,)):
                self.payments_ok += 1
                if reply.body.get("status") == "AcceptedSettlementCompleted":
                    partner.payments.append(reply.body["payment_id"])
        elif op == "batch":
            items = [
                {**self._payment_body(partner, "soak batch"), "idempotency_key": uuid.uuid4().hex}
                for _ in range(self.args.batch_items)
            ]
            reply = await self.request("POST", "/v1/quick-payments/batch", partner, json_body={"payments": items})
            if self.record(partner, op, reply, scheduled, (200,)):
                for result in reply.body.get("results", []):
                    if result.get("status") == 201:
                        self.batch_items_ok += 1
                        if result["payment"].get("status") == "AcceptedSettlementCompleted":
                            partner.payments.append(result["payment"]["payment_id"])
                    else:
                        self.item_error(partner, int(result.get("status") or 0), result.get("error"))
        elif op == "refund":
            payment_id = partner.payments.popleft()  # each payment refunded once, in part
            reply = await self.request(
                "POST",
                f"/v1/quick-payments/{payment_id}/refunds",
                partner,
                json_body={"amount": "0.50", "reason": "requested_by_customer", "reference": "soak refund"},
                headers={"x-idempotency-key": uuid.uuid4().hex},
            )
            if self.record(partner, op, reply, scheduled, (201,)):
                self.refunds_ok += 1
        elif op == "agreement":
            _, debtor = partner.agreements[self.rng.randrange(len(partner.agreements))]
            reply = await self.request(
                "POST",
                "/v1/agreements",
                partner,
                json_body={
                    "debtor_account": debtor,
                    "currency": "CNY",
                    "per_payment_limit": "10.00",
                    "daily_limit": "100.00",
                },
            )
            if not self.record(partner, "agreement_create", reply, scheduled, (201,)):
                return
            agreement_id = reply.body["agreement_id"]
            started = time.monotonic()
            reply = await self.request("POST", f"/admin/v1/agreements/{agreement_id}/authorise", None, admin=True)
            if not self.record(partner, "agreement_authorise", reply, started, (200,)):
                return
            started = time.monotonic()
            reply = await self.request("DELETE", f"/v1/agreements/{agreement_id}", partner)
            self.record(partner, "agreement_revoke", reply, started, (200,))
        elif op == "balance":
            account = partner.settlement_account
            reply = await self.request("GET", f"/v1/accounts/{account}/balance", partner)
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "transactions":
            reply = await self.request(
                "GET", f"/v1/accounts/{partner.settlement_account}/transactions?limit=50", partner
            )
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "agreements_list":
            reply = await self.request("GET", "/v1/agreements?limit=50", partner)
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "get_payment":
            payment_id = partner.payments[self.rng.randrange(len(partner.payments))]
            reply = await self.request("GET", f"/v1/quick-payments/{payment_id}", partner)
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "events":
            after = f"&after={partner.events_cursor}" if partner.events_cursor else ""
            reply = await self.request("GET", f"/v1/events?limit=100{after}", partner)
            if self.record(partner, op, reply, scheduled, (200,)) and isinstance(reply.body, dict):
                partner.events_cursor = reply.body.get("last_cursor") or partner.events_cursor
        elif op == "recon":
            day = datetime.datetime.now(datetime.UTC).date().isoformat()
            reply = await self.request(
                "GET", f"/v1/reconciliation-files/{day}?provisional=true", partner, read_text=True
            )
            self.record(partner, op, reply, scheduled, (200,))
        elif op == "webhooks_list":
            reply = await self.request("GET", "/v1/webhook-endpoints", partner)
            self.record(partner, op, reply, scheduled, (200,))
        else:
            raise AssertionError(op)
