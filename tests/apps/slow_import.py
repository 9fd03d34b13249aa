"""An App whose module is slow to import, so a test can signal ``pgjobs work`` mid-start.

The import announces itself on stderr, then waits (up to 30 s) for the file named by
``SLOW_IMPORT_RELEASE`` to exist.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pgjobs

sys.stderr.write("slow_import: importing\n")
sys.stderr.flush()
_release = Path(os.environ["SLOW_IMPORT_RELEASE"])
_pacer = threading.Event()
for _ in range(3000):  # at most 30 s
    if _release.exists() or _pacer.wait(0.01):
        break

app = pgjobs.App()


@app.task(name="slow_import.job")
def job() -> None:
    """Never runs in the test: the worker is stopped during start-up."""
