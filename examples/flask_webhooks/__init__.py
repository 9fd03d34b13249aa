"""The webhook receiver on Flask and sync SQLAlchemy 2 (see README.md here)."""
