"""Celery apps for the adapter's worker-subprocess tests and bench (see tests/test_celery_*.py)."""
