"""The `pgjobs` command line: ``cli`` is the complete Typer tree, ``main`` the script."""

from .main import cli, main

__all__ = ["cli", "main"]
