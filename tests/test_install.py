"""A plain `pip install pgjobs` (no extras, not editable), as a production app gets it.

It brings no PostgreSQL (pgserver is the `embedded` extra) and no Prometheus exporter
(the `metrics` extra); without a URL every command says what to set or install, in one
line, exit 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

_NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", ".pgjobs", "__pycache__", "build",
                                      "*.egg-info", "node_modules", ".mypy_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with `pip install <source copy>`: the bin directory."""
    base = tmp_path_factory.mktemp("plain-install")
    source = base / "src"
    # A copy, so the build's build/ and *.egg-info never land in the checkout.
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield venv / "bin"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PGJOBS_DATABASE_URL", "DATABASE_URL", "PGJOBS_SCHEMA", "PYTHONPATH")}
    env.update(extra)
    return env


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_no_postgresql_and_no_exporter_are_installed(plain_install: Path) -> None:
    code = ("import importlib.util\n"
            "def present(name):\n"
            "    try:\n        return importlib.util.find_spec(name) is not None\n"
            "    except ModuleNotFoundError:\n        return False\n"
            "print([m for m in ('pgserver', 'prometheus_client', "
            "'opentelemetry.exporter.prometheus') if present(m)])\n")
    out = subprocess.run([str(plain_install / "python"), "-c", code], capture_output=True,
                         text=True, check=True, cwd="/").stdout.strip()
    assert out == "[]"


def test_without_a_url_commands_name_the_variable_and_the_extra(
        plain_install: Path, tmp_path: Path) -> None:
    for argv in (["stats"], ["migrate"], ["dead-letters", "list"]):
        result = subprocess.run([str(plain_install / "pgjobs"), *argv], cwd=tmp_path,
                                env=_env(), capture_output=True, text=True, timeout=60)
        line = _one_line(result)
        assert "PGJOBS_DATABASE_URL" in line and "pgjobs[embedded]" in line, line
    assert not (tmp_path / ".pgjobs").exists()  # nothing was started or created
    # App() in a program: the same one line, as an exception.
    code = ("import pgjobs\n"
            "try:\n    pgjobs.App().database_url\n"
            "except pgjobs.ConfigurationError as e:\n    print(e)\n")
    out = subprocess.run([str(plain_install / "python"), "-c", code], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "PGJOBS_DATABASE_URL" in out and "pgjobs[embedded]" in out


def test_metrics_port_names_the_metrics_extra(plain_install: Path, tmp_path: Path,
                                              pg_url: str) -> None:
    (tmp_path / "myapp.py").write_text("import pgjobs\napp = pgjobs.App()\n")
    result = subprocess.run(
        [str(plain_install / "pgjobs"), "work", "myapp:app", "--metrics-port", "0"],
        cwd=tmp_path, env=_env(PGJOBS_DATABASE_URL=pg_url), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )
    assert "pgjobs[metrics]" in _one_line(result)
