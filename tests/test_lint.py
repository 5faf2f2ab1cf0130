"""``lint`` / ``check_determinism`` / ``durable lint``: forbidden calls found in the source."""

from __future__ import annotations

import importlib
import itertools
import json
import pathlib
import textwrap

import pytest

from durable_core import App, Context, DeterminismError, on_event
from durable_core.cli import main
from durable_core.testing import Finding, check_determinism, lint

_counter = itertools.count()

HEADER = """\
from durable_core import App, Context, on_event
{imports}

app = App("linted")

@app.function(id="f", trigger=on_event("x/y"))
async def f(ctx: Context) -> object:
    ctx.log.info("start")
"""
BODY_LINE = 9  # the first body line of the module written below (HEADER has 8 lines)


def write_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Write ``source`` as a fresh importable module; return its name."""
    name = f"lint_case_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return name


def app_with(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, imports: str,
             body: str) -> tuple[App, str]:
    source = HEADER.format(imports=imports) + textwrap.indent(textwrap.dedent(body), "    ")
    name = write_module(tmp_path, monkeypatch, source)
    module = importlib.import_module(name)
    return module.app, str(tmp_path / f"{name}.py")


# (imports, the call line, the call as reported, category, replacement)
FORBIDDEN = [
    ("import time", "time.time()", "time.time()", "reads the wall clock", "use ctx.now()"),
    ("import time", "time.time_ns()", "time.time_ns()", "reads the wall clock", "use ctx.now()"),
    ("import time", "time.monotonic()", "time.monotonic()", "reads the wall clock",
     "use ctx.now()"),
    ("import time", "time.perf_counter()", "time.perf_counter()", "reads the wall clock",
     "use ctx.now()"),
    ("import time as t", "t.time()", "t.time()", "reads the wall clock", "use ctx.now()"),
    ("from time import time", "time()", "time()", "reads the wall clock", "use ctx.now()"),
    ("from time import monotonic as mono", "mono()", "mono()", "reads the wall clock",
     "use ctx.now()"),
    ("import datetime", "datetime.datetime.now()", "datetime.datetime.now()",
     "reads the wall clock", "use ctx.now()"),
    ("from datetime import datetime", "datetime.now()", "datetime.now()",
     "reads the wall clock", "use ctx.now()"),
    ("from datetime import datetime as DT", "DT.utcnow()", "DT.utcnow()",
     "reads the wall clock", "use ctx.now()"),
    ("import datetime as dt", "dt.datetime.today()", "dt.datetime.today()",
     "reads the wall clock", "use ctx.now()"),
    ("from datetime import date", "date.today()", "date.today()", "reads the wall clock",
     "use ctx.now()"),
    ("import random", "random.random()", "random.random()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("import random as r", "r.choice([1, 2])", "r.choice()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("from random import randint", "randint(1, 6)", "randint()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("import random", "random.Random()", "random.Random()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("import os", "os.urandom(8)", "os.urandom()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("from os import urandom", "urandom(8)", "urandom()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("import uuid", "uuid.uuid4()", "uuid.uuid4()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("from uuid import uuid1", "uuid1()", "uuid1()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("import secrets", "secrets.token_hex(8)", "secrets.token_hex()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("from secrets import choice", "choice('ab')", "choice()", "is random",
     "use ctx.random() or ctx.uuid4()"),
    ("import time", "time.sleep(1)", "time.sleep()", "blocks or waits outside the run",
     "use ctx.step.sleep() or ctx.step.run()"),
    ("import asyncio", "await asyncio.sleep(1)", "asyncio.sleep()",
     "blocks or waits outside the run", "use ctx.step.sleep() or ctx.step.run()"),
    ("import trio", "await trio.sleep(1)", "trio.sleep()", "blocks or waits outside the run",
     "use ctx.step.sleep() or ctx.step.run()"),
    ("from trio import sleep", "await sleep(1)", "sleep()", "blocks or waits outside the run",
     "use ctx.step.sleep() or ctx.step.run()"),
    ("", "open('x.txt')", "open()", "does I/O", "do it in a step: ctx.step.run()"),
    ("import socket", "socket.socket()", "socket.socket()", "does I/O",
     "do it in a step: ctx.step.run()"),
    ("import subprocess as sp", "sp.run(['ls'])", "sp.run()", "does I/O",
     "do it in a step: ctx.step.run()"),
    ("import urllib.request", "urllib.request.urlopen('http://x')",
     "urllib.request.urlopen()", "does I/O", "do it in a step: ctx.step.run()"),
    ("from urllib.request import urlopen", "urlopen('http://x')", "urlopen()", "does I/O",
     "do it in a step: ctx.step.run()"),
]


@pytest.mark.parametrize(("imports", "line", "call", "category", "replacement"), FORBIDDEN,
                         ids=[f"{i or 'builtin'}|{c}" for i, c, *_ in FORBIDDEN])
def test_each_forbidden_call_is_flagged_with_its_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, imports: str, line: str,
    call: str, category: str, replacement: str,
) -> None:
    app, file = app_with(tmp_path, monkeypatch, imports, f"x = {line}\nreturn None\n")
    [finding] = lint(app)
    assert finding == Finding("f", file, BODY_LINE, call, category, replacement)
    assert str(finding) == f"{file}:{BODY_LINE}: f: {call} {category}; {replacement}"
    with pytest.raises(DeterminismError) as err:
        check_determinism(app)
    assert f"  {finding}" in str(err.value).splitlines()


def test_an_import_inside_the_function_is_resolved(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = app_with(tmp_path, monkeypatch, "", """\
        import random as rnd
        from time import perf_counter
        return rnd.random() + perf_counter()
    """)
    assert [(f.line, f.call) for f in lint(app)] == [
        (BODY_LINE + 2, "rnd.random()"), (BODY_LINE + 2, "perf_counter()")]


ALLOWED = """\
    import datetime
    import logging
    import random
    import time
    import uuid

    def charge(amount):
        time.sleep(0.1)
        return {"at": time.time(), "id": str(uuid.uuid4()), "r": random.random()}

    app = App("clean")

    @app.function(id="clean", trigger=on_event("x/y"))
    async def clean(ctx: Context) -> object:
        logging.getLogger(__name__).info("start")
        ctx.log.info("at %s", ctx.now())
        total = sum(x * 2 for x in range(10)) + len(sorted([3, 1], key=lambda v: -v))
        when = ctx.now() + datetime.timedelta(hours=1)
        rng = random.Random(42).random()              # seeded: deterministic
        a = await ctx.step.run("a", lambda: time.time() + random.random())
        b = await ctx.step.run("b", charge, total)   # a module-level helper as a step body

        def fetch():
            with open(__file__) as f:
                return f.read(10) + str(datetime.datetime.now())

        async def wait():
            import trio
            await trio.sleep(0)
            return uuid.uuid4().hex

        c = await ctx.step.run("c", fetch)
        d = await ctx.step.run("d", fn=wait)
        await ctx.step.sleep("pause", "1h")
        return [total, str(when), rng, a, b, c, d, ctx.random(), str(ctx.uuid4())]
"""


def test_allowed_things_are_untouched(tmp_path: pathlib.Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = "from durable_core import App, Context, on_event\n" + textwrap.dedent(ALLOWED)
    module = importlib.import_module(write_module(tmp_path, monkeypatch, source))
    assert lint(module.app) == []
    check_determinism(module.app)  # does not raise


def test_a_nested_helper_called_directly_is_orchestration_code(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = app_with(tmp_path, monkeypatch, "import random", """\
        def pick():
            return random.random()
        used = await ctx.step.run("s", lambda: 1)
        return pick() + used
    """)
    assert [(f.line, f.call) for f in lint(app)] == [(BODY_LINE + 1, "random.random()")]


def test_a_local_name_shadowing_a_module_is_not_flagged(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = app_with(tmp_path, monkeypatch, "import random", """\
        random = ctx.random
        return random()
    """)
    assert lint(app) == []


def test_every_function_and_every_call_is_reported_in_order(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = HEADER.format(imports="import time\nimport uuid") + textwrap.indent(
        "t = time.time()\nreturn str(uuid.uuid4()) + str(t)\n", "    ") + textwrap.dedent("""

        @app.function(id="g", trigger=on_event("x/z"))
        async def g(ctx: Context) -> None:
            time.sleep(1)
        """)
    module = importlib.import_module(write_module(tmp_path, monkeypatch, source))
    found = [(f.function_id, f.line, f.call) for f in lint(module.app)]
    assert found == [("f", 10, "time.time()"), ("f", 11, "uuid.uuid4()"),
                     ("g", 16, "time.sleep()")]
    with pytest.raises(DeterminismError) as err:
        check_determinism(module.app)
    assert "3 call(s)" in str(err.value)
    assert all(s in str(err.value) for s in ("time.time()", "uuid.uuid4()", "time.sleep()"))


def test_a_function_without_source_is_skipped_with_a_reason() -> None:
    app = App("exec")
    namespace: dict[str, object] = {"app": app, "on_event": on_event, "Context": Context}
    exec(compile(textwrap.dedent("""\
        import time

        @app.function(id="hidden", trigger=on_event("x/y"))
        async def hidden(ctx):
            return time.time()
        """), "<generated>", "exec"), namespace)
    [finding] = lint(app)
    assert finding.skipped and finding.function_id == "hidden" and finding.file == "<generated>"
    assert "source unavailable" in finding.replacement
    assert str(finding).startswith("<generated>: hidden: skipped: source unavailable")
    check_determinism(app)  # nothing was found, so nothing is raised


def test_cli_lint_exit_codes_and_output(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_module(tmp_path, monkeypatch, HEADER.format(imports="import time as t")
                       + "    return t.time()\n")
    good = write_module(tmp_path, monkeypatch, HEADER.format(imports="")
                        + "    return ctx.now().isoformat()\n")
    file = str(tmp_path / f"{bad}.py")

    assert main(["lint", f"{bad}:app"]) == 1
    out, err = capsys.readouterr()
    assert out == f"{file}:9: f: t.time() reads the wall clock; use ctx.now()\n" and err == ""

    assert main(["lint", f"{bad}:app", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == [{
        "function_id": "f", "file": file, "line": 9, "call": "t.time()",
        "category": "reads the wall clock", "replacement": "use ctx.now()", "skipped": False}]

    assert main(["lint", f"{good}:app"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["lint", f"{good}:app", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_lint_reports_skipped_functions_without_failing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The module builds its function with exec, so its source cannot be read.
    name = write_module(tmp_path, monkeypatch, textwrap.dedent('''\
        from durable_core import App, on_event

        app = App("gen")
        exec(compile(
            "@app.function(id='gen', trigger=on_event('x/y'))\\n"
            "async def gen(ctx):\\n"
            "    return 1\\n", "<generated>", "exec"), {"app": app, "on_event": on_event})
        '''))
    assert main(["lint", f"{name}:app"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("<generated>: gen: skipped: source unavailable")
