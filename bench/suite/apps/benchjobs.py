"""RQ job functions for the bench (imported by work-horses of both venvs)."""


def noop():
    return None
