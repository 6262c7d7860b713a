"""Cost of redaction on the worker's hot path.

    .venv/bin/python bench/bench_redaction.py

Prints microseconds per call (best of several rounds, so a busy machine inflates less) for a
typical task event, the same event through json.dumps as a yardstick, a 2 KB traceback, and a
kwargs dict with secrets in it.
"""

from __future__ import annotations

import json
import platform
import timeit

from z4j_bare.redaction import Redactor

TYPICAL = {
    "task_name": "app.tasks.send_email", "queue": "default", "worker": "celery@host",
    "args": [42, "hello"], "kwargs": {"user_id": 7, "email_template": "welcome", "retries": 3},
}
TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/usr/lib/python3.11/site-packages/celery/app/trace.py", line {i}, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    for i in range(18)
) + "ValueError: boom\n"
SECRETS = {
    "task_name": "app.tasks.charge", "queue": "billing", "worker": "celery@host",
    "kwargs": {"email": "alice@example.com", "api_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
               "note": "card 4111 1111 1111 1111", "dsn": "postgres://app:pw@db/app", "amount": 1250},
}


def best_us(fn, number: int, repeat: int = 7) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    r = Redactor()
    assert r.scrub_data(TYPICAL) == TYPICAL
    rows = [
        ("typical event: scrub_data", best_us(lambda: r.scrub_data(TYPICAL), 20000)),
        ("typical event: json.dumps (yardstick)", best_us(lambda: json.dumps(TYPICAL), 20000)),
        ("typical kwargs dict: scrub", best_us(lambda: r.scrub(TYPICAL["kwargs"]), 20000)),
        (f"{len(TRACEBACK)} B traceback: scrub_text", best_us(lambda: r.scrub_text(TRACEBACK), 2000)),
        ("event with 5 secrets: scrub_data", best_us(lambda: r.scrub_data(SECRETS), 5000)),
    ]
    print(f"python {platform.python_version()} on {platform.machine()}")
    for name, us in rows:
        print(f"{name:42s} {us:8.2f} us")


if __name__ == "__main__":
    main()
