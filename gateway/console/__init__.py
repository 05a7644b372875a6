"""The operator console (/console): an admin login, then a live page of the figures the
metrics and the admin API already give. See routes.py for the routes, session.py for the
login, snapshot.py for where the figures come from, static/ for the page's script."""

from __future__ import annotations

from .routes import add_routes

__all__ = ["add_routes"]
