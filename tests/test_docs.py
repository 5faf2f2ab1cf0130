"""The documentation's code blocks run: README.md and docs/*.md stay true."""

from __future__ import annotations

import pathlib
import re
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path: pathlib.Path, tmp_path: pathlib.Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block of a page runs, in order, in one namespace (a page is one
    script). Blocks that are not meant to run are written as ```py instead."""
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall(path.read_text(encoding="utf-8"))
    # A real module, so dataclasses and annotations defined by the page resolve.
    module = types.ModuleType(f"doc_{path.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for i, block in enumerate(blocks):
        code = compile(block, f"{path.name}[block {i}]", "exec")
        exec(code, module.__dict__)
