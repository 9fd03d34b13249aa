"""`pgjobs demo` as the quick start runs it: the installed command, a visible live view,
stats that show the work just done, and hints a user can paste."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

INSTALLED = Path(sys.executable).parent / "pgjobs"


def test_demo_tour(pg_url, schema):
    result = subprocess.run([str(INSTALLED), "demo"], env=cli_env(pg_url, schema), cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    assert "Traceback" not in result.stderr

    # The live view lasts long enough to watch (a lower bound: a slow machine only adds).
    worked = re.search(r"worked (\d+) jobs in ([\d.]+)s", out)
    assert worked, out
    succeeded, seconds = int(worked.group(1)), float(worked.group(2))
    assert succeeded > 250 and seconds >= 3.0, worked.group(0)

    # Stats right after: ok/min counts the last 60 s, so the jobs just done show up.
    header = next(line for line in out.splitlines() if "ok/min" in line)
    assert "fail/min" in header and "…" not in header  # headers intact in a pipe
    row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("pgjobs-demo"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    ok_per_min = int(cells[6])
    assert 0.85 * succeeded <= ok_per_min <= succeeded, (ok_per_min, succeeded)

    # The hints name the command that ran, which is not on PATH here.
    cli = str(INSTALLED.relative_to(ROOT)) if INSTALLED.is_relative_to(ROOT) else str(INSTALLED)
    assert f"{cli} stats" in out.replace("\n", " ")
