"""The customer's web pages, served by the gateway off the payment path: the consent page
(`/consent/...`, consent.py), the portal (`/portal/...`, portal.py), their admin API
(admin.py: redirect URIs, phones, the SMS outbox) and their stylesheet. HTML, headers and
CSRF: html.py; codes, sessions and SMS: customer.py."""

from __future__ import annotations

from aiohttp import web

from ..state import Gateway
from . import admin, consent, portal
from .customer import Customers
from .html import SECURITY_HEADERS, STATIC_DIR

__all__ = ["add_routes"]


def add_routes(routes: web.RouteTableDef, gw: Gateway) -> None:
    customers = Customers(gw.router, gw.config.token_key)
    css = (STATIC_DIR / "consent" / "consent.css").read_bytes()
    icon = (STATIC_DIR / "consent" / "favicon.svg").read_bytes()

    @routes.get("/consent/static/consent.css")
    async def stylesheet(request: web.Request) -> web.Response:
        response = web.Response(body=css, content_type="text/css", charset="utf-8")
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    # Linked from every page (base.html), so a browser does not ask for /favicon.ico, which is
    # the API's JSON 404; the pages' CSP allows images from 'self' only, so not a data: URL.
    @routes.get("/consent/static/favicon.svg")
    async def favicon(request: web.Request) -> web.Response:
        response = web.Response(body=icon, content_type="image/svg+xml")
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    consent.add_routes(routes, gw, customers)
    portal.add_routes(routes, gw, customers)
    admin.add_routes(routes, gw, customers)
