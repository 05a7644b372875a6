"""A small synchronous JSON-over-HTTP client for the CLI (demo seeding, admin calls)."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["Api", "ApiCallError", "wait_ready"]


class ApiCallError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Api:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0, unavailable_retries: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # 503 means "outcome unknown, retry"; callers that send idempotent requests
        # (every write here carries a key or is a create whose repeat is harmless) may retry.
        self.unavailable_retries = unavailable_retries

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> Any:
        for attempt in range(self.unavailable_retries + 1):
            try:
                return self._request(method, path, body, token=token, headers=headers, form=form)
            except ApiCallError as exc:
                if exc.status != 503 or attempt == self.unavailable_retries:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
    ) -> Any:
        all_headers = dict(headers or {})
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["content-type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            all_headers["content-type"] = "application/json"
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiCallError(exc.code, parsed) from None

    def token(self, client_id: str, client_secret: str) -> str:
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        answer = self.request(
            "POST",
            "/oauth2/token",
            form={"grant_type": "client_credentials"},
            headers={"authorization": f"Basic {basic}"},
        )
        return str(answer["access_token"])


READY_CONSECUTIVE_MIN = 3
READY_CONSECUTIVE_PER_WORKER = 12


def ready_consecutive(workers: int) -> int:
    """How many 200s in a row, each on a new connection, count as "every gateway worker is
    ready". The workers share the port (SO_REUSEPORT) and the kernel spreads connections
    by their source port, so one probe reaches one worker at random: one 200 shows that
    one worker is ready, and another may still be reading its partner cut-off markers
    (gateway/health.py). With w workers, k probes all reach the same one with chance
    w * (1/w)^k: for 12 per worker that is about 1e-7 at w = 2 and far lower above."""
    return max(READY_CONSECUTIVE_MIN, READY_CONSECUTIVE_PER_WORKER * max(1, workers))


def wait_ready(base_url: str, timeout_s: float = 60.0, consecutive: int = 1) -> None:
    """Until /readyz answers 200 `consecutive` times in a row, each on a new connection
    (urllib does not reuse them); any other answer starts the count again."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    in_a_row = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + "/readyz", timeout=2) as response:
                if response.status == 200:
                    in_a_row += 1
                    if in_a_row >= consecutive:
                        return
                    time.sleep(0.01)
                    continue
        except Exception as exc:  # not up yet
            last = exc
        in_a_row = 0
        time.sleep(0.1)
    raise SystemExit(f"the stack at {base_url} did not become ready within {timeout_s}s: {last}")
