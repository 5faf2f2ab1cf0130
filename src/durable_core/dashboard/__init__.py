"""The web dashboard: ``durable serve``.

A server-rendered view of a store (Starlette and Jinja2, served by Hypercorn on trio): the
functions of an app with their triggers and options, runs filtered by function, status and
time, a run's step timeline with its errors, outputs and waits, events with the runs they
started, a form to send an event and a button to cancel a run. Install it with the
``dashboard`` extra (``pip install 'durable-core[dashboard]'``).
"""

from __future__ import annotations

from durable_core.dashboard._server import create_app, serve

__all__ = ["create_app", "serve"]
