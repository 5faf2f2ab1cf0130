"""Loading an application by its ``package.module:app`` spec (the CLI and worker processes)."""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING

from durable_core.core._function import App

if TYPE_CHECKING:
    from durable_core.store import Store

DEFAULT_STORE = "sqlite:///durable.db"
"""The store every entry point uses when given none and ``$DURABLE_STORE`` is not set: a
SQLite file named ``durable.db`` in the current directory."""

_CWD_ENTRIES = ("", ".")


def _cwd_last() -> None:
    """Put the working directory at the end of ``sys.path`` (adding it if missing).

    The app usually lives in the working directory, so it must be importable from there;
    but a file there must not replace a library (a ``./stores.py`` would otherwise be
    imported instead of durable-core's ``stores``, a ``./trio.py`` instead of trio). Last
    on the path, the directory provides what nothing installed provides, and nothing else.
    ``python -m`` and ``python -c`` put it first; that is undone here too."""
    cwd = os.getcwd()
    kept = [p for p in sys.path if p not in _CWD_ENTRIES and p != cwd]
    sys.path[:] = [*kept, cwd]


def load_app(spec: str) -> App:
    """Import ``package.module:app`` and return the :class:`App` it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"durable: expected 'package.module:app', got {spec!r}")
    _cwd_last()
    module = importlib.import_module(module_name)
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise SystemExit(f"durable: {spec!r} is not a durable_core.App")
    return app


def import_stores() -> types.ModuleType:
    """durable-core's ``stores`` package, or an :class:`ImportError` that says what shadows it.

    The stores are a top-level package, ``stores`` (the project's layout: a store is a
    plug-in beside the core, not inside it). A user's own ``stores.py`` (or ``stores/``)
    earlier on ``sys.path`` would be imported instead and fail later with an
    ``AttributeError``; every place durable-core imports the package comes here instead."""
    import stores

    if getattr(stores, "_DURABLE_CORE_STORES", False):
        return stores
    where = getattr(stores, "__file__", None) or repr(stores)
    raise ImportError(
        f"'import stores' found {where}, not durable-core's stores package: a module of "
        "yours named 'stores' shadows it. Rename your module (for example to "
        "'app_stores.py'), or open stores with durable_core.open_store(url) from code that "
        "does not put that directory first on sys.path", name="stores", path=where)


def store_url(url: str | None = None) -> str:
    """The store URL to use: ``url`` if given, else ``$DURABLE_STORE``, else
    :data:`DEFAULT_STORE`."""
    return url or os.environ.get("DURABLE_STORE") or DEFAULT_STORE


def open_store(url: str | None = None) -> Store:
    """Open the store at ``url``; without one, at ``$DURABLE_STORE``, else the SQLite file
    ``durable.db`` in the current directory (what the ``durable`` command uses too).

    ``url`` is ``memory://``, ``sqlite:///path.db``, ``postgresql://user@host:port/db`` or a
    scheme added with ``stores.register``; see ``stores.open``."""
    return import_stores().open(store_url(url))  # type: ignore[no-any-return]
