"""Events: the user-level facts that trigger functions, resolve waits and cancel runs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs

from durable_core.base._errors import InvalidEventError, SerializationError
from durable_core.base._serde import MAX_JSON_DEPTH, check_text, converter, json_problem

_default_converter = converter
_M = TypeVar("_M")

__all__ = ["MAX_EVENT_BYTES", "MAX_EVENT_ID_BYTES", "MAX_EVENT_NAME_BYTES", "Event", "Sent"]

MAX_EVENT_NAME_BYTES = 512
MAX_EVENT_ID_BYTES = 512
MAX_EVENT_BYTES = 512 * 1024
# Inngest accepts timestamps in [1980-01-01, 2100-01-01).
_MIN_TS = 315_532_800_000
_MAX_TS = 4_102_444_800_000


def _check_name(_inst: Event, _attr: attrs.Attribute[str], name: object) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidEventError(
            f"event.name: must be a non-empty string, got {name!r}; name events like "
            "'order/created'",
            field="event.name",
        )
    check_text(name, what="event.name", error=InvalidEventError, nul=True)
    _check_bytes(name, "event.name", MAX_EVENT_NAME_BYTES, "use a shorter name")


def _check_bytes(text: str, field: str, limit: int, fix: str) -> None:
    # Valid text (checked first) encodes in at most 4 bytes a character: encode only when
    # it might be over the limit.
    if len(text) > limit // 4 and len(text.encode("utf-8")) > limit:
        raise InvalidEventError(
            f"{field}: {len(text.encode('utf-8'))} bytes is over the limit of {limit} bytes; "
            f"{fix}",
            field=field,
        )


def _check_data(_inst: Event, _attr: attrs.Attribute[Any], data: object) -> None:
    if not isinstance(data, Mapping):
        raise InvalidEventError(
            f"event.data: must be a JSON object (a dict), got {type(data).__name__}; "
            "wrap the value, e.g. data={'value': ...}",
            field="event.data",
        )


def _check_id(_inst: Event, _attr: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidEventError(
            f"event.id: must be a non-empty string or None, got {value!r}", field="event.id"
        )
    if value is not None:
        check_text(value, what="event.id", error=InvalidEventError, nul=True)
        _check_bytes(value, "event.id", MAX_EVENT_ID_BYTES,
                     "use a shorter id (a hash of a longer key)")


def _check_ts(_inst: Event, _attr: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEventError(
            f"event.ts: must be an int of milliseconds since the epoch, got {value!r}",
            field="event.ts",
        )
    if not _MIN_TS <= value < _MAX_TS:
        raise InvalidEventError(
            f"event.ts: {value} is outside [1980-01-01, 2100-01-01) in ms since the epoch; "
            "pass milliseconds, not seconds",
            field="event.ts",
        )


def _copy_data(data: Any) -> Any:
    # Copy a mapping so later mutation of the caller's dict cannot change the event. A data
    # model (an attrs class, a dataclass, a pydantic model) becomes its JSON object through
    # the shared converter (read it back typed with Event.data_as / ctx.event_data); anything
    # else is left for the validator to reject with a clear message.
    if isinstance(data, Mapping):
        return dict(data)
    if _is_model(data):
        try:
            raw = converter.unstructure(data)
        except Exception as exc:
            raise InvalidEventError(
                f"event.data: a {type(data).__name__} could not be turned into JSON "
                f"({type(exc).__name__}: {exc}); register hooks on durable_core.converter "
                "or send a dict", field="event.data") from None
        return dict(raw) if isinstance(raw, Mapping) else raw
    return data


def _is_model(value: Any) -> bool:
    """An instance of an attrs class, a dataclass or a pydantic model."""
    cls = type(value)
    return (attrs.has(cls) or dataclasses.is_dataclass(cls)
            or callable(getattr(cls, "model_dump", None)))


@attrs.frozen(eq=True)
class Event:
    """A user-level fact sent to the engine.

    ``name`` is a non-empty string of at most 512 bytes (``"order/created"``); ``data`` a JSON
    object nested at most 64 levels deep; ``id`` an optional dedupe key of at most 512 bytes
    (a second event with the same id within 24 hours triggers nothing); ``ts`` milliseconds
    since the epoch, filled in by the engine when ``None``. The whole event must serialize to
    at most 512 KiB of JSON. Every string must be valid Unicode (no lone surrogates); the
    name and id may not contain NUL characters. ``data`` may also be a data model (an attrs
    class, a dataclass, a pydantic model): it is stored as its JSON object (through
    ``durable_core.converter``), and :meth:`data_as` (``ctx.event_data`` in a function)
    reads it back as that type.

    Raises :class:`~durable_core.InvalidEventError` naming the field when any of this fails.
    """

    name: str = attrs.field(validator=_check_name)
    data: dict[str, Any] = attrs.field(
        factory=dict, converter=_copy_data, validator=_check_data
    )
    id: str | None = attrs.field(default=None, validator=_check_id)
    ts: int | None = attrs.field(default=None, validator=_check_ts)

    def __attrs_post_init__(self) -> None:
        # Data nested too deeply or holding a lone surrogate is refused here (the name and
        # the id were checked by their validators). JSON text nests at most half its length
        # deep, so only long texts need the walk; encoding finds any lone surrogate.
        try:
            text = self.to_json()
        except RecursionError:
            text = None
        if text is None or len(text) > 2 * MAX_JSON_DEPTH:
            problem = json_problem(self.data)
            if problem is not None:
                raise InvalidEventError(
                    f"event.data: {problem}; send at most {MAX_JSON_DEPTH} levels of nesting "
                    "and only valid Unicode text",
                    field="event.data",
                )
            assert text is not None
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            problem = json_problem(self.data) or "a string in it is not valid Unicode text"
            raise InvalidEventError(
                f"event.data: {problem}; send only valid Unicode text", field="event.data"
            ) from None
        if size > MAX_EVENT_BYTES:
            raise InvalidEventError(
                f"event: {size} bytes of JSON is over the limit of {MAX_EVENT_BYTES} bytes "
                f"(event {self.name!r}); store large payloads elsewhere and send a reference",
                field="event",
            )

    def data_as(self, cls: type[_M], converter: Any = None) -> _M:
        """``data`` as a ``cls`` (an attrs class, a dataclass, a pydantic model...), built by
        ``converter`` (a cattrs converter; default ``durable_core.converter``). Raises
        :class:`~durable_core.SerializationError` naming the type when the data does not
        fit it."""
        conv = _default_converter if converter is None else converter
        try:
            value: _M = conv.structure(self.data, cls)
        except Exception as exc:
            raise SerializationError(
                f"event {self.name!r}: its data does not fit {getattr(cls, '__name__', cls)!s} "
                f"({type(exc).__name__}: {exc}); check the sender's data or the type",
                field="event.data") from None
        return value

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-compatible dict (the shape CEL expressions see)."""
        return {"name": self.name, "data": self.data, "id": self.id, "ts": self.ts}

    def to_json(self) -> str:
        """The event as compact JSON. Raises InvalidEventError if ``data`` is not JSON."""
        try:
            return json.dumps(
                self.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise InvalidEventError(
                f"event.data: not JSON-serializable ({exc}); send only dicts, lists, strings, "
                "numbers, booleans and None",
                field="event.data",
            ) from None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        """Build an event from its dict form, validating every field. A ``traceparent``
        key (the W3C trace context stored with events sent while tracing is on, see
        :mod:`durable_core.otel`) is accepted and left out of the event."""
        if not isinstance(raw, Mapping):
            raise InvalidEventError(
                f"event: expected a JSON object with 'name' and 'data', got {type(raw).__name__}",
                field="event",
            )
        unknown = set(raw) - {"name", "data", "id", "ts", "traceparent"}
        if unknown:
            raise InvalidEventError(
                f"event: unknown field(s) {sorted(unknown)}; allowed: name, data, id, ts",
                field="event",
            )
        if "name" not in raw:
            raise InvalidEventError("event.name: missing; every event needs a name",
                                    field="event.name")
        data = raw.get("data")
        return cls(
            name=raw["name"],
            data={} if data is None else data,
            id=raw.get("id"),
            ts=raw.get("ts"),
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        """Parse and validate an event from JSON text."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise InvalidEventError(f"event: invalid JSON ({exc})", field="event") from None
        except RecursionError:
            raise InvalidEventError(
                f"event.data: nested more than {MAX_JSON_DEPTH} levels deep (the limit)",
                field="event.data",
            ) from None
        return cls.from_dict(raw)


class Sent(list[str]):
    """What every ``send`` returns (``Client.send``, ``Worker.send``, ``Engine.send``,
    ``TestEngine.send``, ``Simulation.send``): the ids of the events, in the order given.

    It is a ``list`` of ``str``, so ``[event_id] = client.send(event)`` works. An event sent
    without an ``id`` gets one here. ``duplicates`` holds the ids that had already been
    accepted before this send (within the 24-hour dedupe window): those events are kept but
    start nothing and resolve no wait again. ``TestEngine.send`` returns a subclass that also
    holds the runs the events started (:class:`durable_core.testing.SentRuns`).
    """

    __slots__ = ("duplicates",)

    def __init__(self, ids: Iterable[str] = (), duplicates: Iterable[str] = ()) -> None:
        super().__init__(ids)
        self.duplicates: frozenset[str] = frozenset(duplicates)

    @classmethod
    def of(cls, stored: Iterable[tuple[str, bool]]) -> Sent:
        """From ``(id, duplicate)`` pairs as a store returned them, one per event sent. An id
        is a duplicate only if none of its events in this send was new."""
        pairs = list(stored)
        new = {i for i, dup in pairs if not dup}
        return cls([i for i, _ in pairs], {i for i, dup in pairs if dup and i not in new})

    def __repr__(self) -> str:
        return f"Sent({list(self)!r}, duplicates={sorted(self.duplicates)!r})"
