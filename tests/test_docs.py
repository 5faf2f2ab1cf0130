"""The documentation's code blocks run: README.md and docs/**/*.md stay true, and the
documentation site (mkdocs.yml) builds with every warning an error."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
NEEDS_POSTGRES = "<!-- needs: postgres -->"
"""A page whose samples use the PostgreSQL server says so with this line: its test then
skips (or fails, on CI) like the other PostgreSQL tests when the server is down."""


def _page_id(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix().removeprefix("docs/")


@pytest.mark.parametrize("path", DOCS, ids=_page_id)
def test_python_blocks_run(path: pathlib.Path, tmp_path: pathlib.Path,
                           monkeypatch: pytest.MonkeyPatch,
                           request: pytest.FixtureRequest) -> None:
    """Every ```python block of a page runs, in order, in one namespace (a page is one
    script). Blocks that are not meant to run are written as ```py instead."""
    monkeypatch.chdir(tmp_path)
    text = path.read_text(encoding="utf-8")
    if NEEDS_POSTGRES in text:
        monkeypatch.setenv("DURABLE_PG_URL", request.getfixturevalue("pg_url"))
    blocks = BLOCK.findall(text)
    # A real module, so dataclasses and annotations defined by the page resolve.
    module = types.ModuleType(f"doc_{path.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for i, block in enumerate(blocks):
        code = compile(block, f"{_page_id(path)}[block {i}]", "exec")
        exec(code, module.__dict__)


def test_site_builds(tmp_path: pathlib.Path) -> None:
    """``mkdocs build --strict`` (what ``nox -s docs`` runs) succeeds: every page of the nav
    exists and is linked correctly, every docs page is in the nav, the API reference renders
    from the docstrings. The site has the README as its home page, the reference entries and
    the benchmark plots."""
    if os.environ.get("CI", "").lower() != "true":
        pytest.importorskip("mkdocs", reason="the docs extra is not installed")
        pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "An embeddable durable-execution engine for Python" in home
    assert 'href="tutorial/"' in home  # README's docs/tutorial.md link, rewritten for the site
    api = (site / "reference" / "durable_core" / "index.html").read_text(encoding="utf-8")
    for name in ("durable_core.App", "durable_core.Client", "durable_core.RunHandle"):
        assert f'id="{name}"' in api, name
    assert ":class:`" not in api  # Sphinx roles became links or code
    plots = (site / "benchmark-plots" / "index.html").read_text(encoding="utf-8")
    for image in re.findall(r'src="([^"]+\.png)"', plots):
        assert (site / "benchmark-plots" / image).resolve().is_file(), image
    assert "img/" in plots


def _bench_plots() -> types.ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import plots
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return plots


def test_benchmark_plot_data_is_the_benchmarks_page() -> None:
    """Every number in benchmarks/results.json stands in docs/benchmarks.md as it is written
    there (a plot never shows a number the page does not have)."""
    data = json.loads((ROOT / "benchmarks" / "results.json").read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    for row in data["throughput"]["rows"]:
        line = (f"| {row['store']} | {row['runs']:,} | {row['processes']} | "
                f"{row['steps_per_s']:,} |")
        assert line in page, f"docs/benchmarks.md has no throughput row {line!r}"
    for row in data["overhead"]["rows"]:
        start = f"| {row['path']} | {row['steps_per_run']} | {row['runs']} | "
        end = f" | {row['overhead_us']:.2f} |"
        assert any(ln.startswith(start) and ln.endswith(end) for ln in page.splitlines()), (
            f"docs/benchmarks.md has no overhead row {start}...{end}")


def test_benchmark_plots_are_drawn_from_the_current_data() -> None:
    """Each plot records the SHA-256 of the results.json it was drawn from: a changed
    results.json needs `nox -s plots` (and the new images committed)."""
    plots = _bench_plots()
    for name in plots.PLOTS:
        meta = plots.png_text(ROOT / "docs" / "img" / name)
        assert meta.get("Data-SHA256") == plots.data_hash(), (
            f"docs/img/{name} was drawn from other numbers: run `nox -s plots`")
