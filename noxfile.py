"""Task runner: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s bench``,
``nox -s docs`` (the documentation site), ``nox -s plots`` (its benchmark plots)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (Postgres tests skip loudly if the server is down, off CI)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the sources, tests and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src/."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: step overhead (and store throughput when present)."""
    session.install("-e", ".[dev]")
    session.run("python", "benchmarks/step_overhead.py", *session.posargs)
    import pathlib

    if pathlib.Path("benchmarks/store_throughput.py").exists():
        session.run("python", "benchmarks/store_throughput.py", *session.posargs)


@nox.session
def crash(session: nox.Session) -> None:
    """The simulation tests with the thorough Hypothesis profile (thousands of examples),
    plus the process crash tests."""
    session.install("-e", ".[dev]")
    session.run(
        "pytest", "-s", "tests/test_simulation.py", "tests/test_crash.py", *session.posargs,
        env={"DURABLE_SIM_PROFILE": "thorough"},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs-material + mkdocstrings) into site/, every warning an
    error. ``nox -s docs -- serve`` previews it instead."""
    session.install("-e", ".[docs]")
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:], env=env)
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs, env=env)


@nox.session
def plots(session: nox.Session) -> None:
    """Render docs/img/bench-*.png from benchmarks/results.json (the numbers of
    docs/benchmarks.md); commit the images with the numbers."""
    session.install("-e", ".[plots]")
    session.run("python", "benchmarks/plots.py", *session.posargs)
