"""`python -m loadtest.generator`: one template at a constant rate, the result as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse

from loadtest.generator.parent import run_load
from loadtest.generator.spec import (
    IDEMPOTENCY_KEY,
    LoadSpec,
    RequestTemplate,
)

# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.generator",
        description="Open-loop HTTP/1.1 load at a constant rate; prints JSON results.",
    )
    parser.add_argument("--url", required=True, help="http://host:port/path (no TLS)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second (total)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of offered load")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64, help="connections_max (total)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout, s")
    parser.add_argument("--warmup", type=float, default=0.0, help="unrecorded seconds at start")
    parser.add_argument("--requests-max", type=int, default=None)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeat)")
    parser.add_argument("--body", default="", help="request body; may contain " + IDEMPOTENCY_KEY)
    parser.add_argument("--idempotency-header", default=None, help="e.g. x-idempotency-key")
    parser.add_argument("--histogram", action="store_true", help="include the encoded histogram")
    args = parser.parse_args(argv)

    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        parser.error("--url must look like http://host:port/path")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    headers = []
    for header in args.header:
        name, separator, value = header.partition(":")
        if not separator:
            parser.error(f"--header must be 'Name: value', got {header!r}")
        headers.append((name.strip(), value.strip()))
    template = RequestTemplate(
        method=args.method.upper(),
        path=path,
        headers=tuple(headers),
        body=args.body.encode(),
        idempotency_key_header=args.idempotency_header,
    )
    spec = LoadSpec(
        host=url.hostname,
        port=url.port or 80,
        rate_per_s=args.rate,
        duration_s=args.duration,
        processes=args.processes,
        connections_max=args.connections,
        timeout_s=args.timeout,
        warmup_s=args.warmup,
        requests_max=args.requests_max,
        requests=[template],
    )
    try:
        spec.validate()
    except ValueError as error:
        parser.error(str(error))
    result = run_load(spec)
    json.dump(result.to_dict(include_histogram=args.histogram), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if result.errors == 0 else 1
