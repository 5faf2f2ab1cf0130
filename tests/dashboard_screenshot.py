"""Make docs/dashboard-run.png: the run page of a failed run, as the browser test sets it up.

Run from the repository root: ``.venv/bin/python tests/dashboard_screenshot.py``. Needs
Debian's ``chromium``; serves the dashboard with ``durable serve`` on a free port against a
temporary SQLite store filled by ``dashboard_app.populate``.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dashboard_app import populate  # noqa: E402
from durable_core import open_store  # noqa: E402
from test_dashboard import _start_serve, _stop  # noqa: E402

OUT = HERE.parent / "docs" / "dashboard-run.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = pathlib.Path(tmp) / "shot.db"
        store = open_store(f"sqlite:///{db}")
        ids = populate(store)
        store.close()
        proc, url = _start_serve(db)
        try:
            subprocess.run(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={tmp}/profile", "--window-size=1100,720",
                 f"--screenshot={OUT}", f"{url}/runs/{ids['failed']}"],
                check=True, timeout=120, capture_output=True)
        finally:
            _stop(proc)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
