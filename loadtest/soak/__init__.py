"""`quickpay soak`: mixed open-loop traffic from many partners for a long while, then checks.

Against a stack it starts itself (`quickpay up` on an embedded PostgreSQL, as `quickpay
bench` does: loadtest.bench.stack.StackProcess) or a running one (--url and its --state-dir).
The population is seeded as the bench seeds it (loadtest.bench.population.seed_at): partners
through the admin API, funded customers with authorised agreements over the shard protocol.

Traffic: ``--partners`` partners, each on its own open-loop timetable (request k at
t0 + phase + k / rate; latency is measured from that scheduled time, so a stall shows in
every request it delays). Well-behaved partners send single and batch payments, refunds,
agreement create / authorise (the customer, through the admin API) / revoke, balance and
list reads, the events feed, provisional reconciliation files, and read their webhook
endpoints; some register an endpoint on a local receiver (loopback) and get deliveries.
The last ``--hostile`` partners send bad input (the classes of tests/test_hostile_input.py
and tests/test_poison*.py): out-of-range times with odd UTC offsets, non-NFC text, huge and
negative amounts, oversized bodies, 10,000-character paths, batches over the item limit and
bursts over their (lowered) rate limit, and many pending agreements over one account.

Verdict (exit 1 if any fails): no 5xx at all; the conservation audit (ledger.audit, what
`quickpay check` runs) passes; every hostile request was refused in the one error shape (or,
where the input is acceptable, answered 2xx as the API documents: non-NFC text reads back
in NFC); every well-behaved partner got only the answers it expected, and got answers.
Reported too: each partner's p50/p99, errors by code, the RSS of every process of the stack
at the start and the end, table sizes. Writes OUT/soak-report.json and OUT/soak-summary.txt.

Every loop is bounded (the timetable by the duration, in-flight requests by
INFLIGHT_MAX, each request by --timeout-s, the drain by DRAIN_S); every server listens on
127.0.0.1.
"""

from loadtest.soak.options import GOOD_MIX, HOSTILE_CLASSES, add_soak_arguments, parse_duration
from loadtest.soak.run import run_soak

__all__ = ["GOOD_MIX", "HOSTILE_CLASSES", "add_soak_arguments", "parse_duration", "run_soak"]
