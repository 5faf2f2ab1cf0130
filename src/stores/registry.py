"""Which store a URL opens: a scheme -> factory table that custom stores can join.

``stores.open(url)`` looks the URL's scheme up here; ``durable worker --store URL`` and
``BackgroundWorker``/``Client`` users go through it, and ``durable worker --processes N``
asks :func:`shareable` whether N processes could share the store. Register a custom store
once, before those run (for ``durable worker``, at import time of the app's module)::

    stores.register("mystore", MyStore.from_url, shareable=True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import attrs

from durable_core.base._errors import ValidationError
from durable_core.base._redact import redact_url
from durable_core.store import Store

__all__ = ["Scheme", "open", "register", "schemes", "shareable"]


@attrs.frozen
class Scheme:
    """A registered URL scheme: ``factory(url)`` opens the store; ``shareable(url)`` says
    whether several processes opening the same URL share one store (a file or a server),
    rather than each getting its own (in-process memory)."""

    name: str
    factory: Callable[[str], Store]
    shareable: Callable[[str], bool]


_lock = threading.Lock()
_schemes: dict[str, Scheme] = {}


def _scheme_of(url: str) -> str:
    scheme, sep, _ = url.strip().partition(":")
    if not sep or not scheme:
        raise ValidationError(
            f"store url {redact_url(url)!r}: no scheme; use one of {', '.join(schemes())} "
            "(e.g. sqlite:///path.db)",
            field="store",
        )
    return scheme.lower()


def register(
    scheme: str, factory: Callable[[str], Store], *,
    shareable: bool | Callable[[str], bool] = True, replace: bool = False,
) -> None:
    """Make ``stores.open`` open URLs ``scheme:...`` with ``factory(url)``.

    ``shareable`` (a bool, or a function of the URL) says whether worker processes opening
    the URL share one store (``durable worker --processes`` refuses it otherwise).
    Registering a scheme that is taken raises :class:`~durable_core.ValidationError` unless
    ``replace=True``."""
    name = scheme.lower()
    if not name or not name.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise ValidationError(
            f"store scheme {scheme!r}: use letters, digits, '+', '-' or '.' (e.g. 'mystore')",
            field="scheme",
        )
    check = shareable if callable(shareable) else (lambda _url, _s=bool(shareable): _s)
    with _lock:
        if name in _schemes and not replace:
            raise ValidationError(
                f"store scheme {name!r} is already registered; pass replace=True to replace it",
                field="scheme",
            )
        _schemes[name] = Scheme(name, factory, check)


def schemes() -> list[str]:
    """The registered schemes, sorted."""
    with _lock:
        return sorted(_schemes)


def _lookup(url: str) -> Scheme:
    name = _scheme_of(url)
    with _lock:
        found = _schemes.get(name)
    if found is None:
        raise ValidationError(
            f"store url {redact_url(url)!r}: unsupported scheme {name!r}; registered: "
            f"{', '.join(schemes())} (e.g. memory://, sqlite:///path.db, "
            "postgresql://user@host/db; add one with stores.register)",
            field="store",
        )
    return found


def open(url: str) -> Store:
    """Open the store ``url`` names, through its scheme's registered factory."""
    return _lookup(url).factory(url.strip())


def shareable(url: str) -> bool:
    """Whether worker processes that each open ``url`` share one store."""
    return _lookup(url).shareable(url.strip())


# ------------------------------------------------------------------ the built-in schemes


def _memory(url: str) -> Store:
    if url not in ("memory://", "memory:"):
        raise ValidationError(f"store url {redact_url(url)!r}: use memory://", field="store")
    from stores._memory import MemoryStore

    return MemoryStore()


def _sqlite(url: str) -> Store:
    from stores.sqlite import SQLiteStore  # imported on first use: it needs sqlite_utils

    return SQLiteStore.from_url(url)


def _sqlite_shareable(url: str) -> bool:
    return url.split("?", 1)[0] not in ("sqlite://", "sqlite:///:memory:")


def _postgres(url: str) -> Store:
    from stores.postgres import PostgresStore  # imported on first use: it needs psycopg

    return PostgresStore.from_url(url)


register("memory", _memory, shareable=False)
register("sqlite", _sqlite, shareable=_sqlite_shareable)
register("postgresql", _postgres)
register("postgres", _postgres)
