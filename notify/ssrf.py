"""Which webhook URLs may be called (server-side request forgery).

Only http(s) URLs, without credentials, of at most URL_MAX_CHARS. Their host must resolve
to public addresses only: loopback, private (RFC 1918, unique-local), link-local (the
cloud metadata address 169.254.169.254 among them), multicast, reserved and unspecified
addresses are refused, unless the stack runs with `--webhooks-allow-private` (`quickpay up
--demo` sets it, so the README's local receiver works). The check is made when an endpoint
is registered and again at every delivery, on the addresses actually connected to
(`CheckedResolver`), so a name that later resolves elsewhere (DNS rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "URL_MAX_CHARS",
    "CheckedResolver",
    "UrlRefused",
    "address_allowed",
    "check_url",
    "connector",
    "ip_literal",
    "resolve_checked",
]

URL_MAX_CHARS = 2_048


class UrlRefused(ValueError):
    """The URL may not be called; the message says why."""


def check_url(url: str) -> tuple[str, int]:
    """(host, port) of an acceptable URL, else UrlRefused. Does not resolve."""
    if not isinstance(url, str) or not 0 < len(url) <= URL_MAX_CHARS or not url.isascii():
        raise UrlRefused(f"the url must be 1-{URL_MAX_CHARS} ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("the url is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("only http and https urls")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the url may not carry credentials")
    if not parts.hostname:
        raise UrlRefused("the url has no host")
    if any(ch in url for ch in " \t\r\n\\"):
        raise UrlRefused("the url holds whitespace or a backslash")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


_EMBEDDING_IPV4 = tuple(
    ipaddress.ip_network(n)
    for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96", "::ffff:0:0:0/96", "2001::/32")
)


def address_allowed(address: str, allow_private: bool) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if allow_private:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _EMBEDDING_IPV4):
            return False  # NAT64, 6to4, IPv4-compatible, SIIT: an IPv4 address in disguise
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    # is_global is False for loopback, private, link-local, shared (100.64/10), reserved,
    # documentation and unspecified addresses, in both families.
    return ip.is_global and not ip.is_multicast


def ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def resolve_checked(url: str, allow_private: bool, timeout_s: float = 3.0) -> list[str]:
    """The url's addresses, all of them allowed, else UrlRefused."""
    import asyncio

    host, port = check_url(url)
    literal = ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s
            )
        except (TimeoutError, OSError, UnicodeError, ValueError):
            # UnicodeError: the IDNA encoding of a malformed name (an empty or a 64-byte label)
            raise UrlRefused(f"the url's host {host} does not resolve") from None
        addresses = sorted({str(info[4][0]) for info in infos})
    refused = [a for a in addresses if not address_allowed(a, allow_private)]
    if refused or not addresses:
        raise UrlRefused(f"the url's host resolves to a non-public address ({', '.join(refused)[:200]})")
    return addresses


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to an address not allowed. (An IP
    literal in a URL never reaches a resolver: deliveries check those with check_url and
    address_allowed before connecting.)"""

    def __init__(self, allow_private: bool) -> None:
        self.inner = aiohttp.ThreadedResolver()
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if not results or any(not address_allowed(str(r["host"]), self.allow_private) for r in results):
            raise OSError(f"{host} resolves to a non-public address; refused")
        return results

    async def close(self) -> None:
        await self.inner.close()


def connector(allow_private: bool, limit: int) -> Any:
    return aiohttp.TCPConnector(resolver=CheckedResolver(allow_private), limit=limit, ttl_dns_cache=30)
