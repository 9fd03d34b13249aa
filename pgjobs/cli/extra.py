"""Commands defined outside main.py register themselves by being imported here."""
