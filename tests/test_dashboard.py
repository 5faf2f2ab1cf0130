"""The web dashboard (``durable serve``): every page over HTTP against the ASGI app, bad input
answered with 400/404 pages, send and cancel; and end to end in a real headless Chromium
against the ``durable serve`` command."""

from __future__ import annotations

import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from durable_core import App, open_store
from durable_core.dashboard import create_app
from durable_core.store import Store

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dashboard_app import app as shop_app  # noqa: E402
from dashboard_app import populate  # noqa: E402

Ids = dict[str, str]

_SCRIPT = pathlib.Path(sys.executable).parent / "durable"
DURABLE = ([str(_SCRIPT)] if _SCRIPT.exists() else
           [sys.executable, "-c", "import sys; from durable_core.cli import main; "
                                  "sys.exit(main())"])
"""The installed ``durable`` command (the console script beside this Python)."""


class Http:
    """A small synchronous client over the ASGI app, each request in its own ``trio.run``
    (the dashboard runs on trio under ``durable serve``)."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.asgi)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://dash.test") as c:
                return await c.request(method, url, **kw)

        return trio.run(go)

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'dash.db'}")
    yield s
    s.close()


@pytest.fixture
def ids(store: Store) -> Ids:
    return populate(store)


@pytest.fixture
def http(store: Store, ids: Ids) -> Http:
    return Http(create_app(store, app=shop_app))


def _problem(resp: httpx.Response) -> str:
    m = re.search(r'id="problem">(.*?)</div>', resp.text, re.S)
    assert m, resp.text
    return m.group(1)


def _run_ids(resp: httpx.Response) -> list[str]:
    return re.findall(r'class="run-row" data-run-id="([^"]+)"', resp.text)


# --------------------------------------------------------------------------- runs


def test_root_redirects_to_the_runs_list(http: Http) -> None:
    resp = http.get("/")
    assert resp.status_code == 302 and resp.headers["location"] == "/runs"


def test_runs_list_shows_every_run_newest_first_with_status_and_error(
        http: Http, ids: Ids) -> None:
    resp = http.get("/runs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert _run_ids(resp) == [ids["sleeping"], ids["completed"], ids["failed"], ids["waiting"]]
    for status in ("sleeping", "completed", "failed", "waiting"):
        assert f'<span class="badge s-{status}">{status}</span>' in resp.text
    # The error is shown, escaped.
    assert "card declined: amount 900.0 is over the limit &lt;500&gt;" in resp.text
    assert "<500>" not in resp.text


@pytest.mark.parametrize(("query", "expected"), [
    ("function=greet", ["completed"]),
    ("function=charge", ["sleeping", "failed", "waiting"]),
    ("status=failed", ["failed"]),
    ("status=waiting&function=charge", ["waiting"]),
    ("function=nope", []),
    ("since=2000-01-01", ["sleeping", "completed", "failed", "waiting"]),
    ("since=2999-01-01T00:00:00Z", []),
    ("until=2000-01-01T00:00", []),
])
def test_runs_list_filters(http: Http, ids: Ids, query: str, expected: list[str]) -> None:
    resp = http.get(f"/runs?{query}")
    assert resp.status_code == 200
    assert _run_ids(resp) == [ids[name] for name in expected]


def test_time_filter_splits_runs_by_creation(http: Http, ids: Ids, store: Store) -> None:
    from durable_core.base._durations import from_ms

    created = store.get_run(ids["failed"]).created_at
    at = from_ms(created).isoformat().replace("+00:00", "Z")
    since = http.get("/runs", params={"since": at})
    until = http.get("/runs", params={"until": at})
    assert _run_ids(since) == [ids["sleeping"], ids["completed"], ids["failed"]]
    assert _run_ids(until) == [ids["failed"], ids["waiting"]]
    # The filters are kept in the form.
    assert f'value="{at}"' in since.text.replace(".472Z", "Z") or at[:19] in since.text


@pytest.mark.parametrize(("query", "message"), [
    ("status=nope", "status: 'nope' is not a run status; use one of queued, running"),
    ("since=yesterday", "since: 'yesterday' is not a timestamp"),
    ("until=2026-13-01", "until: '2026-13-01' is not a timestamp"),
    ("since=2026-02-01&until=2026-01-01", "since is after until"),
    ("page=0", "page: must be between 1 and 200, got 0"),
    ("page=x", "page: 'x' is not a page number"),
    ("colour=red", "unknown filter 'colour'"),
    ("function=" + "f" * 600, "function: a function id is 1 to 512 characters"),
    ("function=a%00b", "function: a function id is 1 to 512 characters"),
])
def test_bad_filters_get_a_400_page_with_the_message(
        http: Http, query: str, message: str) -> None:
    resp = http.get(f"/runs?{query}")
    assert resp.status_code == 400
    assert message.replace("'", "&#39;") in _problem(resp)


def test_runs_list_is_paginated(store: Store, ids: Ids) -> None:
    from durable_core import Event

    te = populate.engine  # type: ignore[attr-defined]
    te.send([Event("shop/greet", {"name": f"n{i}"}) for i in range(55)])
    http = Http(create_app(store, app=shop_app))
    first = http.get("/runs?function=greet")
    second = http.get("/runs?function=greet&page=2")
    third = http.get("/runs?function=greet&page=3")
    assert len(_run_ids(first)) == 50
    assert len(_run_ids(second)) == 6  # 55 + the one populate started
    assert _run_ids(third) == []
    assert set(_run_ids(first)).isdisjoint(_run_ids(second))
    assert 'href="/runs?function=greet&amp;page=2" rel="next"' in first.text
    assert 'rel="prev"' not in first.text
    assert 'href="/runs?function=greet" rel="prev"' in second.text
    assert 'rel="next"' not in second.text
    assert _run_ids(second)[-1] == ids["completed"]  # oldest last


# --------------------------------------------------------------------------- one run


def test_failed_run_page_shows_each_attempt_with_its_error(http: Http, ids: Ids) -> None:
    resp = http.get(f"/runs/{ids['failed']}")
    assert resp.status_code == 200
    text = resp.text
    assert 'id="run-status">failed<' in text
    assert "StepError: step &#39;charge-card&#39; failed: ValueError: card declined" in text
    # Attempt 1 failed and was retried; attempt 2 failed for good.
    assert re.search(r"attempt 1 failed at \d{4}-\d\d-\d\d [\d:.]+ UTC, retry at", text)
    assert "attempt 2 failed for good at" in text
    # The run's error and each attempt's, each with its traceback.
    assert text.count("ValueError: card declined: amount 900.0 is over the limit "
                      "&lt;500&gt;</pre>") == 3
    assert text.count("Traceback (most recent call last)") >= 3
    assert 'id="cancel"' not in text  # an ended run has no cancel button
    assert "&#34;reserved&#34;: 2" in text or "&quot;reserved&quot;: 2" in text \
        or '"reserved": 2' in text.replace("&#34;", '"')


def test_running_runs_show_what_they_wait_for_and_a_cancel_button(
        http: Http, ids: Ids) -> None:
    sleeping = http.get(f"/runs/{ids['sleeping']}").text
    assert re.search(r"sleeps until \d{4}-\d\d-\d\d [\d:.]+ UTC", sleeping)
    assert "Next wake-up" in sleeping
    assert 'id="cancel"' in sleeping
    assert f'action="/runs/{ids["sleeping"]}/cancel"' in sleeping
    assert "A worker ends the run as cancelled" in sleeping and 'id="rerun"' not in sleeping
    waiting = http.get(f"/runs/{ids['waiting']}").text
    assert ("waits for event &#39;shop/shipped&#39; where async.data.id == event.data.id, "
            "until") in waiting
    assert re.search(r"slept until \d{4}-", waiting)
    assert '"charge_id": "ch_1"' in waiting.replace("&#34;", '"')


def test_completed_run_shows_its_output_escaped(http: Http, ids: Ids) -> None:
    text = http.get(f"/runs/{ids['completed']}").text
    assert 'id="run-output">&#34;hello Ada &lt;b&gt;&#34;</pre>' in text
    assert "<b>" not in text.split("<main>")[1]


@pytest.mark.parametrize("path", ["/runs/r_nope", "/runs/" + "x" * 600,
                                  "/runs/%3Cscript%3E"])
def test_unknown_run_is_a_404_page(http: Http, path: str) -> None:
    resp = http.get(path)
    assert resp.status_code == 404
    assert "no run" in _problem(resp)
    assert "<script>" not in resp.text


def test_unknown_page_and_wrong_method(http: Http) -> None:
    assert http.get("/nowhere").status_code == 404
    resp = http.request("DELETE", "/runs")
    assert resp.status_code == 405
    assert "DELETE is not used at /runs" in _problem(resp)


# --------------------------------------------------------------------------- functions


def test_functions_page_shows_triggers_and_options(http: Http) -> None:
    text = http.get("/functions").text
    assert "app <code>shop</code>" in text
    assert "event <code>shop/order  if event.data.amount &gt; 0</code>" in text
    assert "event <code>shop/greet</code>" in text
    assert "retries = 1" in text and "retries = 0" in text and "max_steps = 1000" in text


def test_functions_page_without_app_lists_function_ids_seen(store: Store, ids: Ids) -> None:
    text = Http(create_app(store)).get("/functions").text
    assert "No app loaded" in text
    assert re.findall(r'class="function-row">\s*<td><a href="/runs\?function=(\w+)"',
                      text) == ["charge", "greet"]
    assert "sleeping 1" in text and "failed 1" in text and "waiting 1" in text


# --------------------------------------------------------------------------- events


def test_events_list_and_event_page(http: Http, ids: Ids, store: Store) -> None:
    text = http.get("/events").text
    event_ids = re.findall(r'class="event-row"><td><a href="/events/([^"]+)"', text)
    assert len(event_ids) == 4
    run = store.get_run(ids["failed"])
    [eid] = run.event_ids
    page = http.get(f"/events/{eid}")
    assert page.status_code == 200
    assert "<code>shop/order</code>" in page.text
    assert '"amount": 900.0' in page.text.replace("&#34;", '"')
    assert f'href="/runs/{ids["failed"]}"' in page.text
    assert "<code>charge</code>" in page.text  # the function its name triggers
    # Looking an event up by id redirects to its page.
    resp = http.get("/events", params={"id": eid})
    assert resp.status_code == 302 and resp.headers["location"] == f"/events/{eid}"


def test_events_list_shows_events_that_started_nothing(http: Http, store: Store) -> None:
    """An event sent elsewhere that started no run (a name no function has) is listed: the
    page reads the store's event log, not only the events that started runs."""
    from durable_core import Client, Event

    [eid] = Client(store, app=shop_app).send(Event("shop/typo", {"x": 1}))
    text = http.get("/events").text
    assert f'href="/events/{eid}"' in text


def test_unknown_event_is_a_404_page(http: Http) -> None:
    resp = http.get("/events/e_nope")
    assert resp.status_code == 404
    assert "no event &#39;e_nope&#39;" in _problem(resp)


# --------------------------------------------------------------------------- send


def test_send_form_sends_and_shows_the_runs_the_event_started(http: Http) -> None:
    assert 'name="data"' in http.get("/send").text
    resp = http.post("/send", data={"name": "shop/greet", "data": '{"name": "Bo"}', "id": ""})
    assert resp.status_code == 303
    location = resp.headers["location"]
    assert location.startswith("/events/")
    page = http.get(location).text
    assert "<code>shop/greet</code>" in page
    # With an app the event is routed at once: the run it started is listed.
    assert len(re.findall(r'class="run-row"><td><a href="/runs/', page)) == 1
    # And the events list shows it (sent from here).
    assert location.split("/")[-1] in http.get("/events").text


def test_send_with_an_event_name_no_function_has_says_so(http: Http) -> None:
    resp = http.post("/send", data={"name": "shop/ordr", "data": "{}"})
    page = http.get(resp.headers["location"]).text
    assert 'id="no-trigger">no function of app <code>shop</code> has a trigger on ' \
           "<code>shop/ordr</code>" in page


@pytest.mark.parametrize(("form", "message"), [
    ({"name": "", "data": "{}"}, "name: the event needs a name"),
    ({"name": "a", "data": "{nope"}, "data: invalid JSON (Expecting property name"),
    ({"name": "a", "data": "[1, 2]"}, "data: must be a JSON object"),
    ({"name": "a", "data": "[" * 5000 + "]" * 5000}, "data:"),
    ({"name": "a\x00b", "data": "{}"}, "event.name"),
    ({"name": "n" * 600, "data": "{}"}, "event.name"),
    ({"name": "a", "data": "{}", "id": "i" * 600}, "event.id"),
])
def test_bad_send_form_is_a_400_page_that_keeps_the_input(
        http: Http, form: dict[str, str], message: str) -> None:
    resp = http.post("/send", data=form)
    assert resp.status_code == 400
    assert message in _problem(resp).replace("&#39;", "'")
    if form["data"] == "{nope":
        assert ">{nope</textarea>" in resp.text


def test_send_refuses_other_origins_and_other_encodings(http: Http) -> None:
    resp = http.post("/send", data={"name": "shop/greet"},
                     headers={"origin": "http://evil.example"})
    assert resp.status_code == 403
    assert "http://evil.example" in _problem(resp)
    resp = http.post("/send", content=b'{"name": "x"}',
                     headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "application/x-www-form-urlencoded" in _problem(resp)
    resp = http.post("/send", content=b"name=\xff",
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400 and "UTF-8" in _problem(resp)
    ok = http.post("/send", data={"name": "shop/greet"},
                   headers={"origin": "http://dash.test"})
    assert ok.status_code == 303


def test_send_without_an_app_leaves_the_event_to_the_workers(store: Store, ids: Ids) -> None:
    http = Http(create_app(store))
    resp = http.post("/send", data={"name": "shop/greet", "data": "{}"})
    assert resp.status_code == 303
    page = http.get(resp.headers["location"]).text
    assert "not yet routed" in page
    assert "shop/greet" in http.get("/events").text


# --------------------------------------------------------------------------- cancel


def test_cancel_button_asks_a_worker_to_cancel_the_run(http: Http, ids: Ids) -> None:
    run_id = ids["sleeping"]
    resp = http.post(f"/runs/{run_id}/cancel")
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/runs/{run_id}?notice=cancel"
    page = http.get(resp.headers["location"]).text
    assert "Cancel requested" in page and 'id="run-status">sleeping<' in page
    assert "A cancel is pending" in http.get(f"/runs/{run_id}").text
    populate.engine.advance("1s")  # type: ignore[attr-defined]
    page = http.get(f"/runs/{run_id}").text
    assert 'id="run-status">cancelled<' in page
    assert 'id="cancel"' not in page
    assert "cancelled from the dashboard" in page
    # The cool-off sleep in progress ended with the run.
    assert '<span class="badge s-abandoned">abandoned</span>' in page


def test_cancel_of_an_ended_or_unknown_run(http: Http, ids: Ids) -> None:
    resp = http.post(f"/runs/{ids['failed']}/cancel")
    assert resp.status_code == 400
    assert "has already ended (failed)" in _problem(resp)
    assert http.post("/runs/r_nope/cancel").status_code == 404
    assert http.get(f"/runs/{ids['sleeping']}/cancel").status_code == 404


def test_rerun_button_starts_a_linked_run_of_an_ended_one(http: Http, ids: Ids) -> None:
    failed = ids["failed"]
    page = http.get(f"/runs/{failed}").text
    assert 'id="rerun"' in page and 'id="cancel"' not in page
    resp = http.post(f"/runs/{failed}/rerun")
    assert resp.status_code == 303
    location = resp.headers["location"]
    assert location.endswith("?notice=rerun")
    new_id = location.split("/runs/", 1)[1].split("?", 1)[0]
    assert new_id != failed
    page = http.get(location).text
    assert "Rerun of" in page and f"/runs/{failed}" in page
    assert 'id="rerun"' not in page and 'id="cancel"' in page  # the new run has not ended
    def events_of(html: str) -> str:
        return html.split("<dt>Events</dt>", 1)[1].split("</dd>", 1)[0]

    assert events_of(http.get(f"/runs/{failed}").text) == events_of(page)  # the same event


def test_rerun_of_a_run_that_has_not_ended_or_is_unknown(http: Http, ids: Ids) -> None:
    resp = http.post(f"/runs/{ids['sleeping']}/rerun")
    assert resp.status_code == 400
    assert "has not ended (sleeping)" in _problem(resp)
    assert http.post("/runs/r_nope/rerun").status_code == 404
    assert 'id="rerun"' not in http.get(f"/runs/{ids['sleeping']}").text


# --------------------------------------------------------------------------- threads


def test_store_calls_run_outside_the_event_loop_thread(store: Store, ids: Ids) -> None:
    threads: set[int] = set()

    class Recording:
        blocking = True

        def __getattr__(self, name: str) -> Any:
            attr = getattr(store, name)
            if not callable(attr):
                return attr

            def call(*a: Any, **kw: Any) -> Any:
                threads.add(threading.get_ident())
                return attr(*a, **kw)

            return call

    http = Http(create_app(Recording(), app=shop_app))  # type: ignore[arg-type]
    threads.clear()  # Client() checked the store on this thread
    for url in ("/runs", f"/runs/{ids['failed']}", "/functions", "/events"):
        assert http.get(url).status_code == 200
    assert threads and threading.get_ident() not in threads


def test_create_app_refuses_a_non_app(store: Store) -> None:
    from durable_core import DurableError

    with pytest.raises(DurableError, match=r"must be a durable_core\.App"):
        create_app(store, app="shop")  # type: ignore[arg-type]
    assert isinstance(shop_app, App)


# --------------------------------------------------------------------------- the command


def _start_serve(db: pathlib.Path) -> tuple[subprocess.Popen[str], str]:
    """``durable serve`` on a free port; returns the process and its URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*DURABLE, "serve", "--store", f"sqlite:///{db}",
         "--app", "dashboard_app:app", "--port", "0"],
        cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # a reader thread: readline() never blocks the test's deadline
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    proc._lines = lines  # type: ignore[attr-defined]  # for _stop
    seen = []
    deadline = time.monotonic() + 60
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        m = re.search(r"dashboard on (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"durable serve did not start: {''.join(seen)}")


def _stop(proc: subprocess.Popen[str]) -> str:
    import signal

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    out = []
    lines: queue.Queue[str] = proc._lines  # type: ignore[attr-defined]
    while line := lines.get(timeout=30):  # until the reader's end mark
        out.append(line)
    return "".join(out)


def test_durable_serve_serves_and_stops_on_sigint(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "serve.db"
    s = open_store(f"sqlite:///{db}")
    ids = populate(s)
    s.close()
    proc, url = _start_serve(db)
    try:
        resp = httpx.get(f"{url}/runs/{ids['failed']}", timeout=30)
        assert resp.status_code == 200 and "card declined" in resp.text
        assert httpx.get(f"{url}/runs?status=bogus", timeout=30).status_code == 400
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "durable serve: stopped" in out


def test_durable_serve_help_and_bad_port() -> None:
    from durable_core.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "70000"])
    assert exc.value.code == 2
    out = subprocess.run([*DURABLE, "serve", "--help"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    for option in ("--store", "--app", "--host", "--port"):
        assert option in out


# --------------------------------------------------------------------------- the browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser() -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        reason = (f"the browser test needs Debian's chromium and chromium-driver ({missing} "
                  "missing): apt-get install -y chromium chromium-driver")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="durable-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(10)
    driver._durable_profile = profile  # removed with the driver
    return driver


def test_in_a_real_browser_open_a_failed_run_and_cancel_a_sleeping_one(
        tmp_path: pathlib.Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    db = tmp_path / "browser.db"
    s = open_store(f"sqlite:///{db}")
    ids = populate(s)
    engine = populate.engine  # type: ignore[attr-defined]
    driver = _browser()
    proc, url = _start_serve(db)
    try:
        # The runs list, then the failed run through its link.
        driver.get(f"{url}/runs")
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.run-row")
        assert [r.get_attribute("data-run-id") for r in rows] == [
            ids["sleeping"], ids["completed"], ids["failed"], ids["waiting"]]
        driver.find_element(By.LINK_TEXT, ids["failed"]).click()
        assert driver.current_url == f"{url}/runs/{ids['failed']}"
        assert driver.find_element(By.ID, "run-status").text == "failed"
        error = driver.find_element(By.ID, "run-error").text
        assert "ValueError: card declined: amount 900.0 is over the limit <500>" in error
        assert "Traceback (most recent call last)" in error  # the error is kept whole
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "attempt 2 failed for good" in body
        # Rerun it: a new run of the same event, linked to the failed one.
        driver.find_element(By.ID, "rerun").click()
        WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("?notice=rerun"))
        assert driver.current_url != f"{url}/runs/{ids['failed']}?notice=rerun"
        assert "Rerun of" in driver.find_element(By.TAG_NAME, "body").text
        assert ids["failed"] in driver.find_element(By.ID, "notice").text

        # The sleeping run: cancel it with the button.
        driver.get(f"{url}/runs/{ids['sleeping']}")
        assert driver.find_element(By.ID, "run-status").text == "sleeping"
        driver.find_element(By.ID, "cancel").click()
        # The click submits the form; the browser navigates on its own time.
        WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("?notice=cancel"))
        assert driver.current_url == f"{url}/runs/{ids['sleeping']}?notice=cancel"
        assert "Cancel requested" in driver.find_element(By.ID, "notice").text
        assert driver.find_element(By.ID, "run-status").text == "sleeping"

        # A worker (here the engine that made the runs) processes the cancel.
        engine.advance("1s")
        driver.refresh()
        assert driver.find_element(By.ID, "run-status").text == "cancelled"
        assert driver.find_elements(By.ID, "cancel") == []
        # And the list agrees.
        driver.get(f"{url}/runs?status=cancelled")
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.run-row")
        assert [r.get_attribute("data-run-id") for r in rows] == [ids["sleeping"]]

        # A bad filter typed by hand is a 400 page with the message, not a crash.
        driver.get(f"{url}/runs?since=someday")
        assert "since: 'someday' is not a timestamp" in driver.find_element(
            By.ID, "problem").text
    finally:
        driver.quit()
        shutil.rmtree(driver._durable_profile, ignore_errors=True)
        _stop(proc)
        s.close()


def test_every_durable_command_in_the_dashboard_docs_parses() -> None:
    import shlex

    from durable_core.cli._main import build_parser

    text = (HERE.parent / "docs" / "dashboard.md").read_text(encoding="utf-8")
    commands = [line for block in re.findall(r"```sh\n(.*?)```", text, re.S)
                for line in block.splitlines() if line.startswith("durable ")]
    assert len(commands) == 2
    for line in commands:
        args = build_parser().parse_args(shlex.split(line)[1:])
        assert args.command == "serve"
    assert (HERE.parent / "docs" / "dashboard-run.png").stat().st_size < 200_000


def test_a_large_output_is_cut_on_the_page(store: Store, ids: Ids) -> None:
    from durable_core.dashboard._pages import MAX_SHOWN_CHARS, pretty_json

    text = pretty_json({"blob": "x" * (MAX_SHOWN_CHARS + 500)})
    assert len(text) < MAX_SHOWN_CHARS + 100
    assert text.endswith("(516 more characters not shown)")


def test_durable_serve_refuses_a_sqlite_store_that_does_not_exist(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from durable_core.cli import main

    missing = tmp_path / "typo.db"
    assert main(["serve", "--store", f"sqlite:///{missing}"]) == 2
    assert f"no store at {missing}" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("path", ["/runs/%00", "/runs/%ED%A0%80", "/events/%00x",
                                  "/events/%FF%FE", "/runs/a%2Fb"])
def test_ids_no_store_can_hold_are_404_pages(http: Http, path: str) -> None:
    assert http.get(path).status_code == 404
    if path.startswith("/runs/"):
        assert http.post(f"{path}/cancel").status_code == 404


def test_a_form_with_a_percent_escape_that_is_not_utf8_is_a_400(http: Http) -> None:
    resp = http.post("/send", content=b"name=%ED%A0%80&data=%7B%7D",
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 400 and "UTF-8" in _problem(resp)


def test_the_runs_list_survives_odd_query_strings(http: Http) -> None:
    for query in ("function=%00", "function=%ED%A0%80", "status=%00", "page=%F0",
                  "since=%00", "page=99999999999999999999"):
        assert http.get(f"/runs?{query}").status_code in (200, 400), query


@pytest.mark.postgres
def test_the_pages_on_postgres(pg_url: str, pg_schema: str) -> None:
    store = open_store(f"{pg_url}?schema={pg_schema}")
    try:
        ids = populate(store)
        http = Http(create_app(store, app=shop_app))
        runs = http.get("/runs")
        assert _run_ids(runs) == [ids["sleeping"], ids["completed"], ids["failed"],
                                  ids["waiting"]]
        failed = http.get(f"/runs/{ids['failed']}").text
        assert "attempt 2 failed for good" in failed
        for path in ("/runs?status=waiting&since=2000-01-01", "/functions", "/events",
                     f"/runs/{ids['waiting']}"):
            assert http.get(path).status_code == 200, path
        for path in ("/runs/%00", "/events/%00", "/runs/r_nope"):
            assert http.get(path).status_code == 404, path
        assert http.get("/runs?function=a%00").status_code == 400
        assert http.post(f"/runs/{ids['sleeping']}/cancel").status_code == 303
        populate.engine.advance("1s")  # type: ignore[attr-defined]
        assert 'id="run-status">cancelled<' in http.get(f"/runs/{ids['sleeping']}").text
        sent = http.post("/send", data={"name": "shop/greet", "data": '{"name": "pg"}'})
        assert len(re.findall(r'class="run-row"><td>',
                              http.get(sent.headers["location"]).text)) == 1
    finally:
        store.close()


def test_the_templates_ship_as_package_data() -> None:
    import fnmatch
    import tomllib

    meta = tomllib.loads((HERE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    globs = meta["tool"]["setuptools"]["package-data"]["durable_core"]
    pkg = HERE.parent / "src" / "durable_core"
    templates = sorted(p.relative_to(pkg).as_posix()
                       for p in (pkg / "dashboard" / "templates").iterdir())
    assert templates and all(any(fnmatch.fnmatch(t, g) for g in globs) for t in templates)
    extras = meta["project"]["optional-dependencies"]
    assert "durable-core[dashboard]" in extras["dev"]
    assert {d.split(">")[0] for d in extras["dashboard"]} == {"starlette", "jinja2",
                                                              "hypercorn"}
