"""The dashboard's ASGI application (Starlette + Jinja2) and its server (Hypercorn on trio)."""

from __future__ import annotations

import collections
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

import durable_core.dashboard._pages as _pages
from durable_core.base._errors import DurableError, RunNotFoundError, ValidationError
from durable_core.core._function import App
from durable_core.dashboard._pages import BadRequest, NotFound
from durable_core.drivers._client import Client
from durable_core.drivers._clock import wall_clock_ms
from durable_core.store import Store

T = TypeVar("T")

MAX_FORM_BYTES = 2 * 1024 * 1024
"""The largest form body accepted (an event is at most 512 KiB of JSON)."""

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("durable_core.dashboard", "templates"),
    autoescape=True,  # every value is escaped unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class _Dashboard:
    """The state behind the routes: the store, the app, a client for send and cancel."""

    def __init__(self, store: Store, app: App | None, clock: Callable[[], int]) -> None:
        self.store = store
        self.app = app
        self.clock = clock
        self.client = Client(store, app=app, clock=clock)
        self.sent: collections.deque[str] = collections.deque(maxlen=200)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store read or write in a worker thread."""
        return await run_in_threadpool(fn, *args)

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        page = _ENV.get_template(template).render(
            path=request.url.path, app_id=None if self.app is None else self.app.id,
            statuses=_pages.STATUSES, **context)
        return HTMLResponse(page, status_code=status)

    def error(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, title=title,
                           message=message, code=status)

    # ------------------------------------------------------------------ pages

    async def index(self, request: Request) -> Response:
        return RedirectResponse("/runs", status_code=302)

    async def runs(self, request: Request) -> Response:
        f = _pages.parse_run_filter(dict(request.query_params))
        page = await self.call(_pages.list_runs_page, self.store, f, self.clock())
        return self.render(request, "runs.html", title="Runs", f=f, page=page,
                           fmt_iso=_pages.fmt_iso)

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        page = await self.call(_pages.run_page, self.store, run_id, self.clock())
        return self.render(request, "run.html", title=f"Run {run_id}", run=page,
                           notice=request.query_params.get("notice"))

    async def cancel(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await _read_form(request)
        record = await self.call(_get_run, self.store, run_id)
        if record.ended_at is not None:
            raise BadRequest(f"run {run_id} has already ended ({record.status}); there is "
                             "nothing to cancel")
        try:
            await self.call(functools.partial(self.client.cancel_run, run_id,
                                              reason="cancelled from the dashboard"))
        except ValidationError as error:  # it ended in the meantime
            raise BadRequest(str(error)) from None
        return RedirectResponse(f"/runs/{quote(run_id, safe='')}?notice=cancel",
                                status_code=303)

    async def rerun(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await _read_form(request)
        record = await self.call(_get_run, self.store, run_id)
        if record.ended_at is None:
            raise BadRequest(f"run {run_id} has not ended ({record.status}); cancel it or "
                             "wait for it before running it again")
        try:
            handle = await self.call(self.client.rerun, run_id)
        except ValidationError as error:
            raise BadRequest(str(error)) from None
        return RedirectResponse(f"/runs/{quote(handle.id, safe='')}?notice=rerun",
                                status_code=303)

    async def functions(self, request: Request) -> Response:
        page = await self.call(_pages.functions_page, self.store, self.app)
        return self.render(request, "functions.html", title="Functions", page=page)

    async def events(self, request: Request) -> Response:
        wanted = request.query_params.get("id", "").strip()
        if wanted:
            return RedirectResponse(f"/events/{quote(wanted, safe='')}", status_code=302)
        page = await self.call(_pages.events_page, self.store, list(self.sent))
        return self.render(request, "events.html", title="Events", page=page)

    async def event(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        page = await self.call(_pages.event_page, self.store, event_id, self.app,
                               self.clock())
        return self.render(request, "event.html", title=f"Event {event_id}", ev=page)

    async def send_form(self, request: Request) -> Response:
        return self.render(request, "send.html", title="Send an event", form={},
                           problem=None)

    async def send(self, request: Request) -> Response:
        form = await _read_form(request)
        try:
            event = _pages.parse_event_form(form)
        except BadRequest as exc:
            return self.render(request, "send.html", status=400, title="Send an event",
                               form=form, problem=exc.message)
        try:
            ids = await self.call(self.client.send, event)
        except DurableError as exc:
            return self.render(request, "send.html", status=400, title="Send an event",
                               form=form, problem=str(exc))
        self.sent.extend(ids)
        return RedirectResponse(f"/events/{quote(ids[0], safe='')}", status_code=303)


def _get_run(store: Store, run_id: str) -> Any:
    if not _pages._storable_id(run_id, 512):
        raise NotFound(f"no run {run_id[:64]!r}")
    try:
        return store.get_run(run_id)
    except RunNotFoundError:
        raise NotFound(f"no run {run_id!r} in this store") from None


async def _read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body, checked: same origin, size, encoding."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = urlsplit(origin).netloc
        if host != request.headers.get("host"):
            raise _Forbidden(f"a form posted from {origin} is refused: the dashboard takes "
                             "forms from its own pages only")
    elif origin == "null":
        raise _Forbidden("a form posted from an opaque origin is refused")
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_FORM_BYTES):
        raise BadRequest(f"the form is larger than {MAX_FORM_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest(f"the form is larger than {MAX_FORM_BYTES} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if body and ctype != "application/x-www-form-urlencoded":
        raise BadRequest(f"forms must be sent as application/x-www-form-urlencoded, got "
                         f"{ctype or 'no content type'!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the form is not valid UTF-8") from None
    try:
        return dict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except ValueError:  # a percent-escape that is not UTF-8
        raise BadRequest("the form is not valid UTF-8") from None


class _Forbidden(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def create_app(store: Store, *, app: App | None = None,
               clock: Callable[[], int] | None = None) -> Starlette:
    """The dashboard as an ASGI application over ``store``.

    ``app`` (a :class:`~durable_core.App`) adds its functions, triggers and options to the
    functions page and routes events sent from the dashboard at once (as
    ``Client(store, app=app)`` does). Serve it with any ASGI server, or with :func:`serve`.
    The store is only read, except by the send form (:meth:`Client.send`) and the cancel
    button (:meth:`Client.cancel_run`); blocking store calls run in worker threads.
    ``clock`` (milliseconds since the epoch) is for tests.
    """
    if app is not None and not isinstance(app, App):
        raise DurableError(f"create_app(app=...) must be a durable_core.App, got "
                           f"{type(app).__name__}")
    d = _Dashboard(store, app, wall_clock_ms if clock is None else clock)

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return d.error(request, 400, "Bad request", exc.message)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, NotFound)
        return d.error(request, 404, "Not found", exc.message)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Forbidden)
        return d.error(request, 403, "Forbidden", exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return d.error(request, 404, "Not found", f"nothing at {request.url.path}")
        if exc.status_code == 405:
            return d.error(request, 405, "Method not allowed",
                           f"{request.method} is not used at {request.url.path}")
        return d.error(request, exc.status_code, "Error", str(exc.detail))

    async def store_error(request: Request, exc: Exception) -> Response:
        return d.error(request, 503, "Store error",
                       f"the store failed: {type(exc).__name__}: {exc}")

    async def server_error(request: Request, exc: Exception) -> Response:
        print(f"durable serve: error on {request.method} {request.url.path}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return d.error(request, 500, "Server error", f"{type(exc).__name__}: {exc}")

    routes = [
        Route("/", d.index),
        Route("/runs", d.runs),
        Route("/runs/{run_id:path}/cancel", d.cancel, methods=["POST"]),
        Route("/runs/{run_id:path}/rerun", d.rerun, methods=["POST"]),
        Route("/runs/{run_id:path}", d.run),
        Route("/functions", d.functions),
        Route("/events", d.events),
        Route("/events/{event_id:path}", d.event),
        Route("/send", d.send_form, methods=["GET"]),
        Route("/send", d.send, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={
        BadRequest: bad_request,
        NotFound: not_found,
        _Forbidden: forbidden,
        HTTPException: http_error,
        DurableError: store_error,
        Exception: server_error,
    })


def serve(store: Store, *, app: App | None = None, host: str = "127.0.0.1",
          port: int = 8288, on_ready: Callable[[list[str]], None] | None = None) -> None:
    """Serve the dashboard over ``store`` with Hypercorn on trio until SIGINT or SIGTERM.

    ``on_ready`` is called with the URLs it listens on (``port=0`` picks a free port)."""
    import signal

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    asgi = create_app(store, app=app)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async def stop() -> None:
                async for _ in signals:
                    return

            async with trio.open_nursery() as nursery:
                urls = await nursery.start(functools.partial(
                    hypercorn_serve, asgi, config, shutdown_trigger=stop))  # type: ignore[arg-type]
                if on_ready is not None:
                    on_ready(list(urls))

    trio.run(main)
