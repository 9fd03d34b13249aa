"""The webhook receiver on FastAPI and async SQLAlchemy 2 (see README.md here)."""
