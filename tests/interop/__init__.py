"""Interop tests against the published z4j brain, run as a separate process."""
