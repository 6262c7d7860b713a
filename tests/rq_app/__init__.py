"""Job functions run by the RQ worker subprocesses in tests/test_rq_*.py."""
