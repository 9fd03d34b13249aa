"""The CLI is one explicit tree, and the library never depends on it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import typer

from .conftest import ROOT

PACKAGE = ROOT / "pgjobs"


def test_importing_pgjobs_cli_gives_every_command():
    """No command depends on some other module having been imported first."""
    code = ("import typer, pgjobs.cli as c; g = typer.main.get_command(c.cli); "
            "print(' '.join(sorted(g.commands)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert {"migrate", "work", "enqueue", "stats", "queues", "dead-letters", "roles",
            "dashboards", "server", "demo"} <= set(out)


def test_command_modules_do_not_register_themselves():
    """Only pgjobs/cli/main.py adds commands to the root; the others never import it."""
    for path in (PACKAGE / "cli").glob("*.py"):
        if path.name in ("main.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "main" and not (node.module or "").endswith("cli.main"), (
                    f"{path.name} imports the root module")


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a module of the pgjobs package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_cli():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        if any(name == "pgjobs.cli" or name.startswith("pgjobs.cli.")
               for name in _imports(path)):
            offenders.append(str(rel))
    assert not offenders, f"library modules importing pgjobs.cli: {offenders}"


def test_no_private_names_imported_across_cli_modules():
    for path in (PACKAGE / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"


def test_demo_and_stats_share_the_table_module():
    for module in ("demo.py", "cli/stats.py", "cli/dead_letters.py"):
        assert "pgjobs.tables" in _imports(PACKAGE / module), module


def test_tree_help_lists_server_group():
    from pgjobs.cli import cli

    server = typer.main.get_command(cli).commands["server"]  # type: ignore[attr-defined]
    assert set(server.commands) == {"status", "stop"}


def test_only_the_table_module_builds_tables():
    """One place renders tables (and escapes what comes from the database)."""
    builders = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                      if "rich.table" in _imports(path) and path.name != "tables.py")
    assert not builders, f"modules building their own rich tables: {builders}"
