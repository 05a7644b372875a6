"""`Client` (blocking, httpx.Client) and `AsyncClient` (asyncio, httpx.AsyncClient).

Both are thin runners over the same plans (`_core`) and request builders (`_operations`):
each public method builds a `Call`, and `_run` executes the plan's effects (send, sleep)
with its own I/O. Results are the API's JSON as plain dicts; errors are the typed
`QuickpayError`s of `quickpay_sdk.errors`. One client holds one partner's credentials
and token; use it as a context manager (or call close()/aclose()) to free connections.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar

import httpx

from . import _operations as ops
from ._core import Call, Core, Page, Plan, Send, Settings, Sleep, next_cursor

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
JSON = dict[str, Any]


class _Base:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout_s: float,
        max_retries: int,
        backoff_base_s: float,
        backoff_max_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._settings = Settings(
            base_url.rstrip("/"),
            client_id,
            client_secret,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
        )
        self._core = Core(self._settings, clock)


class Client(_Base):
    """Blocking partner client. `sleep` and `clock` (monotonic seconds) are for tests;
    `transport` takes e.g. an httpx.MockTransport."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Client and AsyncClient spell out the same keyword arguments on purpose (not **kwargs):
        # partners read the signature in their editor; only sleep's and transport's types differ.
        super().__init__(
            base_url,
            client_id,
            client_secret,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            clock=clock,
        )
        self._sleep = sleep
        self._http = httpx.Client(base_url=self._settings.base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, plan: Plan[T]) -> T:
        try:
            effect = next(plan)
            while True:
                if isinstance(effect, Sleep):
                    self._sleep(effect.seconds)
                    effect = plan.send(None)
                    continue
                try:
                    response = self._send(effect)
                except httpx.TransportError as exc:
                    effect = plan.throw(exc)
                    continue
                effect = plan.send(response)
        except StopIteration as stop:
            return stop.value
        finally:
            plan.close()

    def _send(self, send: Send) -> httpx.Response:
        return self._http.request(
            send.method, send.path, params=send.params, headers=send.headers, content=send.content
        )

    def _call(self, call: Call[T]) -> T:
        return self._run(self._core.execute(call))

    def _pages(self, page: Callable[[str | None], Call[Page]], cursor: str | None = None) -> Iterator[JSON]:
        while True:
            answer = self._call(page(cursor))
            yield from answer.items
            cursor = next_cursor(cursor, answer)
            if cursor is None:
                return

    # -- payments
    def create_payment(
        self,
        agreement_id: str,
        amount: str,
        currency: str,
        creditor_account: str,
        reference: str,
        risk: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        return self._call(
            ops.create_payment(agreement_id, amount, currency, creditor_account, reference, risk, idempotency_key)
        )

    def create_payment_batch(self, items: Sequence[MutableMapping[str, Any]]) -> list[JSON]:
        return self._call(ops.create_payment_batch(items))

    def get_payment(self, payment_id: str) -> JSON:
        return self._call(ops.get_payment(payment_id))

    # -- agreements
    def create_agreement(
        self,
        debtor_account: str,
        currency: str,
        per_payment_limit: str,
        daily_limit: str | None = None,
        periodic_limits: Sequence[Mapping[str, Any]] | None = None,
        valid_from: datetime.datetime | str | None = None,
        valid_to: datetime.datetime | str | None = None,
    ) -> JSON:
        return self._call(
            ops.create_agreement(
                debtor_account, currency, per_payment_limit, daily_limit, periodic_limits, valid_from, valid_to
            )
        )

    def create_agreement_with_redirect(
        self,
        debtor_account: str,
        currency: str,
        per_payment_limit: str,
        *,
        redirect_uri: str,
        state: str,
        daily_limit: str | None = None,
        periodic_limits: Sequence[Mapping[str, Any]] | None = None,
        valid_from: datetime.datetime | str | None = None,
        valid_to: datetime.datetime | str | None = None,
    ) -> JSON:
        """An agreement the customer authorises on the bank's consent page: send them to its
        `authorisation_url`, then check the callback with `quickpay_sdk.verify_callback`."""
        return self._call(
            ops.create_agreement(
                debtor_account,
                currency,
                per_payment_limit,
                daily_limit,
                periodic_limits,
                valid_from,
                valid_to,
                redirect_uri=redirect_uri,
                state=state,
            )
        )

    def get_agreement(self, agreement_id: str) -> JSON:
        return self._call(ops.get_agreement(agreement_id))

    def revoke_agreement(self, agreement_id: str) -> JSON:
        return self._call(ops.revoke_agreement(agreement_id))

    def list_agreements(self, status: str | None = None, page_size: int = 50) -> Iterator[JSON]:
        return self._pages(ops.agreements_page(status, page_size))

    # -- refunds
    def create_refund(
        self,
        payment_id: str,
        amount: str | None = None,
        reason: str | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        return self._call(ops.create_refund(payment_id, amount, reason, reference, idempotency_key))

    def get_refund(self, refund_id: str) -> JSON:
        return self._call(ops.get_refund(refund_id))

    # -- accounts
    def get_balance(self, account_id: str) -> JSON:
        return self._call(ops.get_balance(account_id))

    def list_transactions(self, account_id: str, page_size: int = 50) -> Iterator[JSON]:
        return self._pages(ops.transactions_page(account_id, page_size))

    # -- events and reconciliation
    def list_events(self, after: str | None = None, type: str | None = None, page_size: int = 100) -> Iterator[JSON]:
        return self._pages(ops.events_page(type, page_size), after)

    def download_reconciliation(self, date: datetime.date | str, provisional: bool = False) -> str:
        return self._call(ops.download_reconciliation(date, provisional))


class AsyncClient(_Base):
    """asyncio partner client; the same methods as `Client`, awaited (the list_* ones are
    async iterators). `sleep` is awaited (asyncio.sleep by default)."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # The same keyword arguments as Client's, spelled out for the same reason.
        super().__init__(
            base_url,
            client_id,
            client_secret,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            clock=clock,
        )
        self._sleep = sleep
        self._http = httpx.AsyncClient(base_url=self._settings.base_url, timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, plan: Plan[T]) -> T:
        try:
            effect = next(plan)
            while True:
                if isinstance(effect, Sleep):
                    await self._sleep(effect.seconds)
                    effect = plan.send(None)
                    continue
                try:
                    response = await self._send(effect)
                except httpx.TransportError as exc:
                    effect = plan.throw(exc)
                    continue
                effect = plan.send(response)
        except StopIteration as stop:
            return stop.value
        finally:
            plan.close()

    async def _send(self, send: Send) -> httpx.Response:
        return await self._http.request(
            send.method, send.path, params=send.params, headers=send.headers, content=send.content
        )

    async def _call(self, call: Call[T]) -> T:
        return await self._run(self._core.execute(call))

    async def _pages(self, page: Callable[[str | None], Call[Page]], cursor: str | None = None) -> AsyncIterator[JSON]:
        while True:
            answer = await self._call(page(cursor))
            for item in answer.items:
                yield item
            cursor = next_cursor(cursor, answer)
            if cursor is None:
                return

    # -- payments
    async def create_payment(
        self,
        agreement_id: str,
        amount: str,
        currency: str,
        creditor_account: str,
        reference: str,
        risk: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        return await self._call(
            ops.create_payment(agreement_id, amount, currency, creditor_account, reference, risk, idempotency_key)
        )

    async def create_payment_batch(self, items: Sequence[MutableMapping[str, Any]]) -> list[JSON]:
        return await self._call(ops.create_payment_batch(items))

    async def get_payment(self, payment_id: str) -> JSON:
        return await self._call(ops.get_payment(payment_id))

    # -- agreements
    async def create_agreement(
        self,
        debtor_account: str,
        currency: str,
        per_payment_limit: str,
        daily_limit: str | None = None,
        periodic_limits: Sequence[Mapping[str, Any]] | None = None,
        valid_from: datetime.datetime | str | None = None,
        valid_to: datetime.datetime | str | None = None,
    ) -> JSON:
        return await self._call(
            ops.create_agreement(
                debtor_account, currency, per_payment_limit, daily_limit, periodic_limits, valid_from, valid_to
            )
        )

    async def create_agreement_with_redirect(
        self,
        debtor_account: str,
        currency: str,
        per_payment_limit: str,
        *,
        redirect_uri: str,
        state: str,
        daily_limit: str | None = None,
        periodic_limits: Sequence[Mapping[str, Any]] | None = None,
        valid_from: datetime.datetime | str | None = None,
        valid_to: datetime.datetime | str | None = None,
    ) -> JSON:
        """Client.create_agreement_with_redirect, for asyncio."""
        return await self._call(
            ops.create_agreement(
                debtor_account,
                currency,
                per_payment_limit,
                daily_limit,
                periodic_limits,
                valid_from,
                valid_to,
                redirect_uri=redirect_uri,
                state=state,
            )
        )

    async def get_agreement(self, agreement_id: str) -> JSON:
        return await self._call(ops.get_agreement(agreement_id))

    async def revoke_agreement(self, agreement_id: str) -> JSON:
        return await self._call(ops.revoke_agreement(agreement_id))

    def list_agreements(self, status: str | None = None, page_size: int = 50) -> AsyncIterator[JSON]:
        return self._pages(ops.agreements_page(status, page_size))

    # -- refunds
    async def create_refund(
        self,
        payment_id: str,
        amount: str | None = None,
        reason: str | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        return await self._call(ops.create_refund(payment_id, amount, reason, reference, idempotency_key))

    async def get_refund(self, refund_id: str) -> JSON:
        return await self._call(ops.get_refund(refund_id))

    # -- accounts
    async def get_balance(self, account_id: str) -> JSON:
        return await self._call(ops.get_balance(account_id))

    def list_transactions(self, account_id: str, page_size: int = 50) -> AsyncIterator[JSON]:
        return self._pages(ops.transactions_page(account_id, page_size))

    # -- events and reconciliation
    def list_events(
        self, after: str | None = None, type: str | None = None, page_size: int = 100
    ) -> AsyncIterator[JSON]:
        return self._pages(ops.events_page(type, page_size), after)

    async def download_reconciliation(self, date: datetime.date | str, provisional: bool = False) -> str:
        return await self._call(ops.download_reconciliation(date, provisional))
