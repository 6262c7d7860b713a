"""Scheduler adapters: celery-beat and rq-scheduler (see docs/schedulers.md)."""
