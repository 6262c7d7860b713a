"""Benchmarks (not part of ``make test``). ``python -m bench`` runs both agents side by side."""
