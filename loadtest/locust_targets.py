"""Locust target profiles: does the stack reach the bank's 14k / 30k / 50k payments per second?

    QUICKPAY_POPULATION=.quickpay/population.json .venv/bin/locust -f loadtest/locust_targets.py \\
        --headless --host http://127.0.0.1:8080 --qp-profile quickpay-50k --qp-summary out/target.json

Profiles and gates: ``loadtest.targets`` (core-14k: single payments; quickpay-30k and -50k:
the batch endpoint, 1,000 payments per request by default). Users are constant-throughput
(each paced at ``--qp-user-rps`` requests/s), ramped by a LoadTestShape to the target and
held; only the hold is judged, and the process exits 1 on a miss. Runs as one process, with
``--processes N`` or as ``--master`` plus ``--worker`` processes (possibly on other machines):
the master owns the shape, the totals and the verdict; workers send their payment counts with
their stats reports.

Locust is closed loop per user; pacing many users at a constant rate makes the offered load
open enough for a throughput target, but its latencies are those of the requests that were
sent (no coordinated-omission correction): ``quickpay bench`` measures latency properly.
Never import this module in the pytest process (gevent monkeypatching).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task
from locust.runners import MasterRunner, WorkerRunner

from loadtest.locust_population import load_population, new_idempotency_key
from loadtest.targets import PROFILES, Schedule, evaluate, hold_counts, items_ok_in, summary_text, write_summary

__all__ = ["BatchPaymentUser", "SinglePaymentUser", "TargetShape"]

# Payments answered 201 / failed per wall-clock second of their answer. A worker sends its
# buckets with each stats report and starts afresh; the master (or a standalone process)
# keeps them all, and the verdict sums the seconds inside the hold: exact to a second even
# though workers report every few seconds (workers on other machines need synced clocks).
_buckets: dict[int, list[int]] = {}
_user_numbers = itertools.count()
_hold: dict[str, float | None] = {"started": None, "ended": None, "workers": 0}  # wall-clock times


def _count(ok: int, failed: int) -> None:
    bucket = _buckets.setdefault(int(time.time()), [0, 0])
    bucket[0] += ok
    bucket[1] += failed


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("quickpay target profiles")
    group.add_argument(
        "--qp-profile",
        choices=sorted(PROFILES),
        default="quickpay-50k",
        help="which of the bank's figures to drive the stack at",
    )
    group.add_argument("--qp-ramp-s", type=float, default=20.0, help="ramp to the target (default 20 s)")
    group.add_argument("--qp-hold-s", type=float, default=30.0, help="hold the target, judged (default 30 s)")
    group.add_argument("--qp-scale", type=float, default=1.0, help="multiply the target (tests: a small fraction)")
    group.add_argument("--qp-batch-items", type=int, default=1000, help="payments per batch request (default 1000)")
    group.add_argument(
        "--qp-user-rps", type=float, default=0.0, help="requests/s per user (default: 20 single, 1 batch)"
    )
    group.add_argument("--qp-rate-fraction", type=float, default=0.95, help="rate gate: fraction of the target")
    group.add_argument("--qp-p99-ms", type=float, default=0.0, help="p99 gate (default: 25 ms single, 100 ms batch)")
    group.add_argument("--qp-fail-ratio", type=float, default=0.001, help="failed payments gate (default 0.1%%)")
    group.add_argument("--qp-summary", default="", help="write the verdict as JSON to this file")


def _schedule(options: Any) -> Schedule:
    return Schedule(
        PROFILES[options.qp_profile],
        ramp_s=options.qp_ramp_s,
        hold_s=options.qp_hold_s,
        scale=options.qp_scale,
        batch_items=options.qp_batch_items,
        user_requests_per_s=options.qp_user_rps or None,
    )


class _PacedUser(FastHttpUser):
    abstract = True

    def wait_time(self) -> float:
        return float(self._pacer(self))

    def on_start(self) -> None:
        schedule = _schedule(self.environment.parsed_options)
        self.schedule = schedule
        self._pacer = constant_throughput(schedule.user_pace_at_target())
        population = load_population()
        self.population = population
        indexes = population.partner_indexes_with_agreements
        self.partner_index = indexes[next(_user_numbers) % len(indexes)]
        self.partner = population.partners[self.partner_index]
        self.agreement_ids, _ = population.agreements[self.partner_index]
        self.sample = population.samplers[self.partner_index]
        self.token = ""
        self.token_expires_at = 0.0

    def headers(self) -> dict[str, str]:
        if time.monotonic() > self.token_expires_at - 30:
            with self.client.post(
                "/oauth2/token",
                data=(
                    f"grant_type=client_credentials&client_id={self.partner['client_id']}"
                    f"&client_secret={self.partner['client_secret']}"
                ),
                headers={"content-type": "application/x-www-form-urlencoded"},
                name="/oauth2/token",
                catch_response=True,
            ) as response:
                if response.status_code != 200:
                    response.failure(f"token: HTTP {response.status_code}")
                else:
                    answer = response.json()
                    self.token = answer["access_token"]
                    self.token_expires_at = time.monotonic() + float(answer.get("expires_in", 3600))
        return {"authorization": f"Bearer {self.token}", "content-type": "application/json"}

    def payment(self, key: str | None = None) -> dict[str, Any]:
        body = {
            "agreement_id": self.agreement_ids[self.sample()],
            "amount": "1.00",
            "currency": self.population.currency,
            "creditor_account": self.partner["settlement_account"],
            "reference": "locust target",
        }
        if key is not None:
            body["idempotency_key"] = key
        return body


class SinglePaymentUser(_PacedUser):
    """core-14k: one payment per request."""

    @task
    def pay(self) -> None:
        headers = self.headers()
        headers["x-idempotency-key"] = new_idempotency_key()
        with self.client.post(
            "/v1/quick-payments",
            data=json.dumps(self.payment()),
            headers=headers,
            name="POST /v1/quick-payments",
            catch_response=True,
        ) as response:
            if response.status_code == 201:
                _count(1, 0)
            else:
                _count(0, 1)
                response.failure(f"expected 201, got {response.status_code}")


class BatchPaymentUser(_PacedUser):
    """quickpay-30k / -50k: `--qp-batch-items` payments per request, each with its own key."""

    @task
    def pay_batch(self) -> None:
        items = self.schedule.batch_items
        body = json.dumps(
            {"payments": [self.payment(new_idempotency_key()) for _ in range(items)]}, separators=(",", ":")
        )
        with self.client.post(
            "/v1/quick-payments/batch",
            data=body,
            headers=self.headers(),
            name="POST /v1/quick-payments/batch",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                _count(0, items)
                response.failure(f"expected 200, got {response.status_code}")
                return
            ok, total = items_ok_in(response.content or b"")
            _count(ok, items - ok)
            if total != items or ok != items:
                response.failure(f"{items - ok} of {items} items not 201")


class TargetShape(LoadTestShape):
    """Ramp to the profile's users, hold, stop; resets the statistics when the hold begins."""

    def tick(self) -> tuple[int, float, list[type]] | None:
        runner = self.runner
        assert runner is not None  # Locust sets it before the first tick
        schedule = _schedule(runner.environment.parsed_options)
        run_time = self.get_run_time()
        users = schedule.users_at(run_time)
        if users is None:
            if _hold["ended"] is None:
                _hold["ended"] = time.time()
            return None
        if isinstance(runner, MasterRunner):
            _hold["workers"] = max(_hold["workers"] or 0, runner.worker_count)
        if schedule.in_hold(run_time) and _hold["started"] is None:
            runner.stats.reset_all()  # the p99 gate reads the hold's requests only
            _hold["started"] = time.time()
        user_class = BatchPaymentUser if schedule.profile.kind == "batch" else SinglePaymentUser
        spawn_rate = max(1.0, schedule.users_at_target / max(schedule.ramp_s, 1.0))
        return users, spawn_rate, [user_class]


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any]) -> None:
    data["qp_buckets"] = {str(second): counts for second, counts in _buckets.items()}
    _buckets.clear()


@events.worker_report.add_listener
def _collect(client_id: str, data: dict[str, Any]) -> None:
    for second, (ok, failed) in (data.get("qp_buckets") or {}).items():
        bucket = _buckets.setdefault(int(second), [0, 0])
        bucket[0] += int(ok)
        bucket[1] += int(failed)


@events.quitting.add_listener
def _verdict(environment: Any, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    schedule = _schedule(options)
    started = _hold["started"]
    ended = _hold["ended"] or time.time()
    workers = int(_hold["workers"] or 0) if isinstance(environment.runner, MasterRunner) else 1
    ok, failed, seconds = hold_counts(_buckets, started, ended) if started is not None else (0, 0, 0.0)
    if options.qp_p99_ms:
        p99_bound: float | None = options.qp_p99_ms
    else:
        p99_bound = None
    name = "POST /v1/quick-payments/batch" if schedule.profile.kind == "batch" else "POST /v1/quick-payments"
    entry = environment.stats.entries.get((name, "POST"))
    p99 = entry.get_response_time_percentile(0.99) if entry is not None and entry.num_requests else None
    result = evaluate(
        schedule,
        hold_elapsed_s=seconds,
        payments_ok=ok,
        payments_failed=failed,
        p99_ms=p99,
        rate_fraction_min=options.qp_rate_fraction,
        p99_ms_max=p99_bound,
        fail_ratio_max=options.qp_fail_ratio,
        cpu_count=os.cpu_count(),
        worker_processes=workers,
    )
    if started is None:
        result["met"] = False
        result["gates"]["hold"] = {"ok": False, "text": "the run stopped before the hold began"}
    print(summary_text(result), flush=True)
    if options.qp_summary:
        write_summary(result, options.qp_summary)
    environment.process_exit_code = 0 if result["met"] else 1
