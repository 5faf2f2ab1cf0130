"""mkdocs hooks for the documentation site (mkdocs.yml names this file).

- Optional pages: ``extra.optional_pages`` in mkdocs.yml lists pages that other work adds;
  a listed page that does not exist yet is dropped from the nav (with an info line) instead
  of failing the strict build. Every other page in the nav must exist.
- Includes: a line ``--8<-- "FILE"`` is replaced by that file of the repository (the home
  page is README.md, the changelog page CHANGELOG.md, the examples page the drivers' code).
- Links out of docs/: the pages are also read on GitHub, where README.md links to
  ``docs/x.md`` and docs pages link to ``../examples/x.py`` or ``../CHANGELOG.md``. On the
  site those files are pages of their own (index.md, examples.md, changelog.md), so such
  links are rewritten to them. A link to any other file outside docs/ is left alone, and the
  strict build reports it.
"""

from __future__ import annotations

import logging
import pathlib
import posixpath
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.durable")

# A file outside docs/ (relative to the repository root) -> the page that shows it.
OUTSIDE = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "examples/sync_driver.py": "examples.md#examplessync_driverpy",
    "examples/asyncio_driver.py": "examples.md#examplesasyncio_driverpy",
}

LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)


def _prune(nav: list[Any], missing: set[str]) -> list[Any]:
    out: list[Any] = []
    for item in nav:
        if isinstance(item, dict):
            [(title, value)] = item.items()
            if isinstance(value, list):
                value = _prune(value, missing)
                if not value:
                    continue
            elif value in missing:
                log.info("optional page %s does not exist yet: left out of the nav", value)
                continue
            out.append({title: value})
        elif item not in missing:
            out.append(item)
    return out


def on_config(config: Any) -> Any:
    docs = pathlib.Path(config["docs_dir"])
    optional = config["extra"].get("optional_pages", [])
    missing = {page for page in optional if not (docs / page).exists()}
    if missing and config["nav"]:
        config["nav"] = _prune(config["nav"], missing)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    src = page.file.src_uri  # e.g. "index.md", "howto/trio.md"
    root = pathlib.Path(config["config_file_path"]).parent
    # `--8<-- "FILE"` alone on a line is replaced by FILE (relative to the repository root).
    markdown = INCLUDE.sub(lambda m: (root / m.group(1)).read_text(encoding="utf-8"), markdown)
    # The page's source file, relative to the repository root: index.md shows README.md.
    origin = "README.md" if src == "index.md" else "docs/" + src
    here = posixpath.dirname(src)

    def rewrite(match: re.Match[str]) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(origin), target))
        if repo_path in OUTSIDE:
            page_path, _, page_anchor = OUTSIDE[repo_path].partition("#")
            anchor = anchor or ("#" + page_anchor if page_anchor else "")
        elif repo_path.startswith("docs/"):
            page_path = repo_path.removeprefix("docs/")
        else:
            return match.group(0)
        return f"]({posixpath.relpath(page_path, here or '.')}{anchor})"

    return LINK.sub(rewrite, markdown)


# --- griffe extension (mkdocs.yml: mkdocstrings' `extensions: [docs_hooks.py:SphinxRoles]`) ---

import griffe  # noqa: E402  (only mkdocs loads this module; griffe comes with mkdocstrings)

ROLE = re.compile(
    r":(?:class|func|meth|attr|data|mod|exc|obj):`(~?)([\w.]+(?:\n\s*[\w.]+)?)(\(\))?`"
)


class SphinxRoles(griffe.Extension):
    """The docstrings in src/ write cross-references as Sphinx roles (``:class:`~x.Y```),
    which read well in ``help()``. On the site each becomes a link to the object's entry
    when the API reference documents it (tried as written, then inside the docstring's
    module), else plain code: never an unresolved reference."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None or ":" not in docstring.value:
            return
        module = obj.module.path if not obj.is_module else obj.path

        def link(match: re.Match[str]) -> str:
            tilde, target, call = match.groups()
            target = re.sub(r"\s+", "", target)  # a role broken across two lines
            shown = (target.rsplit(".", 1)[-1] if tilde else target) + (call or "")
            fallback = f"{module}.{target}"
            return (f'<autoref identifier="{target}" slug="{fallback}" optional>'
                    f"<code>{shown}</code></autoref>")

        docstring.value = ROLE.sub(link, docstring.value)
