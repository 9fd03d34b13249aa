"""`python -m pgjobs` is the `pgjobs` command."""

from .cli import main

main()
