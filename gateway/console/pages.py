"""The console's HTML: the login form and the page shell the script fills in.

No partner-supplied string is ever put into this HTML: the page's data arrives as JSON and
static/console.js writes it with textContent only (never innerHTML), so a hostile partner
name is shown as text. The few values that do appear here (CSRF tokens, a fixed message)
are escaped anyway. Every response carries SECURITY_HEADERS: a strict CSP (default-src
'self', no inline script or style, frame-ancestors 'none'), X-Frame-Options DENY, no
referrer, no caching.
"""

from __future__ import annotations

from html import escape

__all__ = ["SECURITY_HEADERS", "console_page", "login_page"]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _head(title: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/console/static/vendor/uPlot.min.css">'
        '<link rel="stylesheet" href="/console/static/console.css">'
        "</head>"
    )


def login_page(csrf: str, message: str | None = None) -> str:
    notice = f'<p class="error" id="login-error">{escape(message)}</p>' if message else ""
    return (
        _head("quickpay console: log in")
        + '<body class="login"><main><h1>quickpay operator console</h1>'
        + notice
        + '<form method="post" action="/console/login" id="login-form">'
        + f'<input type="hidden" name="csrf" value="{escape(csrf, quote=True)}">'
        + '<label for="token">Admin token</label>'
        + '<input type="password" id="token" name="token" autocomplete="off" required maxlength="512">'
        + '<button type="submit" id="login">Log in</button></form>'
        + "<p>The admin token is in the state directory (<code>admin.token</code>). It is exchanged"
        + " for a session cookie valid for an hour; it is not stored in the browser.</p>"
        + "</main></body></html>"
    )


def console_page(logout_csrf: str) -> str:
    return (
        _head("quickpay console")
        + "<body><header><h1>quickpay console</h1>"
        + '<span id="status" class="badge">loading</span>'
        + '<span id="updated"></span>'
        + '<form method="post" action="/console/logout" id="logout-form">'
        + f'<input type="hidden" name="csrf" value="{escape(logout_csrf, quote=True)}">'
        + '<button type="submit" id="logout">Log out</button></form></header>'
        + "<main>"
        + '<section id="overview"><h2>Throughput</h2>'
        + '<p class="big"><span id="payments-per-s">-</span> payments/s'
        + " <small>(POST /v1/quick-payments answered 2xx, all gateway workers)</small></p>"
        + '<p id="reasons"></p></section>'
        + '<section><h2>Committed transfers/s per shard</h2><div id="chart-rate" class="chart"></div></section>'
        + "<section><h2>Group-commit cycle latency per shard (ms, last 2,048 batches)</h2>"
        + '<div id="chart-latency" class="chart"></div></section>'
        + '<section><h2>Shards</h2><table id="shards"><thead><tr><th>shard</th><th>ready</th><th>queue</th>'
        + "<th>cycle p50 ms</th><th>cycle p99 ms</th><th>commit p99 ms</th><th>relay backlog</th>"
        + "<th>relay lag s</th><th>database</th><th>fraud rules enforced</th><th>error</th></tr></thead>"
        + "<tbody></tbody></table></section>"
        + '<section><h2>Database members (Patroni under --ha)</h2><p id="ha-mode"></p><table id="ha">'
        + "<thead><tr><th>shard</th><th>member</th><th>role</th><th>state</th><th>lag bytes</th>"
        + "<th>timeline</th><th>its REST API</th></tr></thead><tbody></tbody></table></section>"
        + '<section><h2>Processes and HA members</h2><table id="children"><thead><tr><th>name</th><th>state</th>'
        + "<th>pid</th><th>restarts</th><th>crash-looping</th><th>last exit</th></tr></thead><tbody></tbody></table>"
        + "</section>"
        + '<section><h2>Errors by route and status</h2><table id="errors"><thead><tr><th>route</th><th>method</th>'
        + "<th>status</th><th>count</th></tr></thead><tbody></tbody></table></section>"
        + '<section><h2>Webhooks</h2><dl id="webhooks"></dl></section>'
        + '<section><h2>Fraud rule sets</h2><div id="rules"></div></section>'
        + '<section class="wide"><h2>Fraud decisions (review and block)</h2><table id="decisions"><thead><tr><th>at</th>'
        + "<th>payment</th><th>amount</th><th>decision</th><th>rules fired and why</th></tr></thead>"
        + "<tbody></tbody></table></section>"
        + "<section><h2>Rules fired in the latest decisions (shadow rules: what they would do)</h2>"
        + '<table id="rule-hits"><thead><tr><th>rule</th><th>action</th><th>mode</th><th>hits</th></tr></thead>'
        + "<tbody></tbody></table></section>"
        + '<section><h2>Fraud alerts (post-event monitor)</h2><table id="alerts"><thead><tr><th>at</th>'
        + "<th>rule</th><th>details</th></tr></thead><tbody></tbody></table></section>"
        + '<section class="wide"><h2>Reconciliation: the daily files of every partner (UTC days)</h2>'
        + '<table id="recon"><thead><tr><th>day</th><th>files</th><th>rows</th><th>payments</th>'
        + "<th>payments to customers</th><th>refunds</th><th>settlement net</th><th>as of</th></tr></thead>"
        + "<tbody></tbody></table></section>"
        + '<section class="wide"><h2>All partners</h2><p id="partner-list-more"></p>'
        + '<table id="partner-list"><thead><tr><th>partner</th><th>name</th><th>enabled</th><th>rate limit</th>'
        + "<th>pending agreements</th><th>created</th></tr></thead><tbody></tbody></table></section>"
        + '<section><h2>Watched partners</h2><form id="watch-form"><label for="watch">Watch partner ids'
        + " (comma-separated, up to 20)</label>"
        + '<input id="watch" name="watch" maxlength="2000"><button type="submit">Watch</button></form>'
        + '<table id="partners"><thead><tr><th>partner</th><th>name</th><th>enabled</th><th>rate limit</th>'
        + "<th>tokens valid after</th><th>created</th></tr></thead><tbody></tbody></table></section>"
        + '<section><h2>Sources not read</h2><ul id="problems"></ul></section>'
        + "</main>"
        + '<script src="/console/static/vendor/uPlot.iife.min.js"></script>'
        + '<script src="/console/static/console.js"></script>'
        + "</body></html>"
    )
