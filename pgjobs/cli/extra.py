"""Commands defined outside main.py register themselves by being imported here."""

from . import dead_letters, work

__all__ = ["dead_letters", "work"]
