"""Runnable pgjobs examples: webhook receivers (FastAPI, Flask) and their worker.

See examples/README.md. Run everything from the repository root, so that
``examples.…`` imports resolve.
"""
