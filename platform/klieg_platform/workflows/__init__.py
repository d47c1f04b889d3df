"""Workflows: documents stored as app revisions (store.py), run as DAGs of requests over the
same queue (executor.py)."""
