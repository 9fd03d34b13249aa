"""Commands defined outside main.py register themselves by being imported here."""

from . import dashboards, dead_letters, roles, work

__all__ = ["dashboards", "dead_letters", "roles", "work"]
