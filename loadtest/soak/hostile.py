"""The hostile partners' requests (the classes of tests/test_hostile_input.py and
tests/test_poison*.py), each of which must be refused in the one error shape or answered as
the API documents."""

from __future__ import annotations

import asyncio
import json
import unicodedata
import uuid

from loadtest.soak.client import Client, Partner
from loadtest.soak.options import HOSTILE_CLASSES


class HostileTraffic(Client):
    # -- hostile operations
    async def hostile_op(self, partner: Partner, scheduled: float) -> None:
        """One hostile request (or a small burst), the class by turns: every class is sent by
        every hostile partner. The first two hostile partners (lowered rate limit) burst."""
        classes = HOSTILE_CLASSES
        kind = classes[partner.hostile_turn % len(classes)]
        partner.hostile_turn += 1
        agreement_id, debtor = partner.agreements[0]
        base = {
            "agreement_id": agreement_id,
            "amount": "0.01",
            "currency": "CNY",
            "creditor_account": partner.settlement_account,
            "reference": "hostile",
        }
        key = {"x-idempotency-key": uuid.uuid4().hex}
        pick = self.rng.choice
        if kind == "timestamps":
            field_name = pick(["valid_to", "valid_from"])
            value = pick(
                [
                    "9999-12-31T23:00:00-05:00",
                    "9998-12-31T23:59:59+00:00",
                    "1970-01-01T00:30:00+01:00",
                    "1970-01-01T00:00:59+00:01",
                    "0001-01-01T00:00:00+23:59",
                    "2026-01-01T00:00:00+24:00",
                    "2026-13-01T00:00:00+05:45",
                    "1970-01-01T05:29:59+05:30",
                    "10000-01-01T00:00:00Z",
                    "2026-06-01T00:00:00",
                    "9999-12-31T23:59:59.999999-23:59",
                ]
            )
            body = {"debtor_account": debtor, "currency": "CNY", "per_payment_limit": "1.00", field_name: value}
            reply = await self.request("POST", "/v1/agreements", partner, json_body=body)
            self.record(
                partner,
                "agreement_create",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
                sent=f"{field_name}={value}",
            )
        elif kind == "non_nfc":
            reference = pick(
                [
                    "Cafe\u0301 cre\u0300me",
                    "\u212b\u2126 \u1e9b\u0323",
                    "\u0958" * 5,
                    "o\u0308\u0304 a\u030a",
                    "\u0958" * 140,
                    "e\u0301" * 139,
                ]
            )
            reply = await self.request(
                "POST", "/v1/quick-payments", partner, json_body={**base, "reference": reference}, headers=key
            )
            acceptable = self.hostile_refused(reply)
            if reply.status == 201:
                # Normalise, then validate: a 2xx reads back in NFC.
                nfc = unicodedata.normalize("NFC", reference)
                acceptable = isinstance(reply.body, dict) and reply.body.get("reference") == nfc
            self.record(
                partner, "pay", reply, scheduled, None, hostile_class=kind, acceptable=acceptable, sent=reference
            )
        elif kind == "amounts":
            amount = pick(
                [
                    "-1",
                    "-0.01",
                    "9" * 40,
                    "99999999999999999999999",
                    "92233720368547758.08",
                    "-92233720368547758.08",
                    "1e3",
                    "\u0663",
                    "\uff11\uff12",
                    "0",
                    "1.001",
                    "NaN",
                    "92233720368547758.07",
                ]
            )
            reply = await self.request(
                "POST", "/v1/quick-payments", partner, json_body={**base, "amount": amount}, headers=key
            )
            # The int64 maximum is a well-formed amount: 201 Rejected by the agreement's limit.
            ok = self.hostile_answered(reply) if amount == "92233720368547758.07" else self.hostile_refused(reply)
            self.record(partner, "pay", reply, scheduled, None, hostile_class=kind, acceptable=ok, sent=amount)
        elif kind == "oversized":
            target = pick(["single", "batch", "agreement", "refund"])
            if target == "batch":
                big = json.dumps(
                    {"payments": [{**base, "idempotency_key": "k" * 40, "reference": "r" * 140}] * 4500}
                ).encode()  # over 1 MiB
                path = "/v1/quick-payments/batch"
            elif target == "refund":
                big = b'{"reference": "' + b"x" * (70 * 1024) + b'"}'
                path = f"/v1/quick-payments/pay_{'0' * 32}_0/refunds"
            elif target == "agreement":
                big = b'{"debtor_account": "' + debtor.encode() + b'", "pad": "' + b"x" * (200 * 1024) + b'"}'
                path = "/v1/agreements"
            else:
                big = json.dumps({**base, "reference": "x" * (70 * 1024)}).encode()
                path = "/v1/quick-payments"
            reply = await self.request("POST", path, partner, raw=big, headers=key)
            self.record(
                partner,
                f"oversized_{target}",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
            )
        elif kind == "long_paths":
            path = pick(
                [
                    "/v1/" + "x" * 10_000,
                    f"/v1/quick-payments/pay_{'0' * 10_000}_0",
                    "/v1/accounts/acc_" + "a" * 10_000 + "/balance",
                    "/v1/agreements/agr_" + "b" * 10_000,
                    "/v1/events?after=" + "9" * 10_000,
                    "/v1/reconciliation-files/" + "2" * 10_000,
                ]
            )
            reply = await self.request("GET", path, partner)
            self.record(
                partner,
                "long_path",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
                sent=path,
            )
        elif kind == "batch_items":
            items = [{**base, "idempotency_key": uuid.uuid4().hex} for _ in range(1001)]
            reply = await self.request("POST", "/v1/quick-payments/batch", partner, json_body={"payments": items})
            self.record(
                partner, "batch", reply, scheduled, None, hostile_class=kind, acceptable=self.hostile_refused(reply)
            )
        elif kind == "pending":
            # Agreements never authorised, over one account: 201 until the cap, then 409.
            account = partner.pending_account or debtor
            reply = await self.request(
                "POST",
                "/v1/agreements",
                partner,
                json_body={"debtor_account": account, "currency": "CNY", "per_payment_limit": "1.00"},
            )
            self.record(
                partner,
                "agreement_create",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_answered(reply),
            )
        elif kind == "control_text":
            reference = pick(["a\x00b", "\x00", "line\nbreak", "\x1b[31m", "\x7f", "\x85"])
            reply = await self.request(
                "POST", "/v1/quick-payments", partner, json_body={**base, "reference": reference}, headers=key
            )
            self.record(
                partner,
                "pay",
                reply,
                scheduled,
                None,
                hostile_class=kind,
                acceptable=self.hostile_refused(reply),
                sent=reference,
            )
        elif kind == "rate_burst":
            # Batches at once, over the partner's limit: 200s, then 429s in the error shape.
            burst = 12 if partner.rate_limited else 3
            bodies = [[{**base, "idempotency_key": uuid.uuid4().hex} for _ in range(5)] for _ in range(burst)]
            replies = await asyncio.gather(
                *(self.request("POST", "/v1/quick-payments/batch", partner, json_body={"payments": b}) for b in bodies)
            )
            for reply in replies:
                self.record(
                    partner,
                    "batch",
                    reply,
                    scheduled,
                    None,
                    hostile_class=kind,
                    acceptable=self.hostile_answered(reply),
                )
        else:
            raise AssertionError(kind)
