"""Loading an application by its ``package.module:app`` spec (the CLI and worker processes)."""

from __future__ import annotations

import importlib
import sys

from durable_core.core._function import App


def load_app(spec: str) -> App:
    """Import ``package.module:app`` and return the :class:`App` it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"durable: expected 'package.module:app', got {spec!r}")
    sys.path.insert(0, ".")
    module = importlib.import_module(module_name)
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise SystemExit(f"durable: {spec!r} is not a durable_core.App")
    return app
