"""Keeping passwords out of logs, banners and error messages.

Store URLs carry credentials (``postgresql://user:secret@host/db``, or a ``password=``
keyword or query parameter). Anything that prints a URL, or an error message that may quote
one, goes through :func:`redact_url` or :func:`redact`: the one place that knows where a
password can hide in a URL.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["REDACTED", "redact", "redact_url"]

REDACTED = "***"
"""What a password is replaced with."""

# ``scheme://user:password@host``: libpq ends the authority at the first ``/`` or ``?``,
# so a password cannot contain either unencoded.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@/?\s]*)@")
# ``password=...`` as a libpq keyword (possibly quoted) or a URL query parameter.
_KEYWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&'\"]+)",
                      re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password in it replaced by ``***``; everything else unchanged.

    Works on malformed URLs too (it never parses the URL, so it never raises)::

        >>> redact_url("postgresql://app:S3cret@db:5432/prod")
        'postgresql://app:***@db:5432/prod'
    """
    url = _USERINFO.sub(lambda m: f"{m['head']}{REDACTED}@", url)
    return _KEYWORD.sub(lambda m: f"{m['head']}{REDACTED}", url)


def _passwords(url: str) -> set[str]:
    found = {m["pw"] for m in _USERINFO.finditer(url)}
    found |= {m["pw"].strip("'") for m in _KEYWORD.finditer(url)}
    found |= {urllib.parse.unquote(p) for p in found}
    # Replacing a one- or two-character "password" everywhere would garble the message
    # without hiding anything worth hiding.
    return {p for p in found if len(p) >= 3}


def redact(text: str, url: str | None = None) -> str:
    """``text`` (an error message, a log line) with the passwords of ``url`` removed wherever
    they appear, and any URL or ``password=`` inside ``text`` itself redacted."""
    if url:
        for pw in sorted(_passwords(url), key=len, reverse=True):
            text = text.replace(pw, REDACTED)
    return redact_url(text)
