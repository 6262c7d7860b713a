"""celery-beat with django-celery-beat: database rows in the brain, toggled and deleted for real.

django-celery-beat's ``python-crontab`` and rq-scheduler's ``crontab`` both install a top-level
``crontab`` module, so these tests run in their own virtualenv (``make test-djbeat``, part of
``make test``), against a real Django project (tests/djbeat/settings.py) on a SQLite file. The
main virtualenv does not collect this file (tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import pytest

DB_DIR = tempfile.mkdtemp(prefix="z4j-djbeat-")
os.environ["Z4J_TEST_DJANGO_DB"] = os.path.join(DB_DIR, "beat.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djbeat.settings")

import django  # noqa: E402

django.setup()

from celery import Celery  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django_celery_beat.models import (  # noqa: E402
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)

from z4j_bare import install_agent  # noqa: E402
from z4j_bare.schedulers.celerybeat_django import DATABASE_SOURCE, DjangoCeleryBeatSource  # noqa: E402
from z4j_bare.testing import LocalBrain  # noqa: E402
from z4j_celerybeat import CeleryBeatSchedulerAdapter  # noqa: E402

FAST = {"heartbeat_seconds": 2, "backoff_max_connection": 1}

call_command("migrate", verbosity=0)


@pytest.fixture(autouse=True)
def _clean_tables():
    PeriodicTask.objects.all().delete()
    yield
    PeriodicTask.objects.all().delete()


def _app() -> Celery:
    app = Celery("djbeat", set_as_current=False)
    app.conf.beat_schedule = {"static-tick": {"task": "tests.noop", "schedule": 30.0}}
    return app


def _tasks() -> dict[str, PeriodicTask]:
    every_ten = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    nightly = CrontabSchedule.objects.create(minute="30", hour="2", day_of_week="*", day_of_month="*",
                                             month_of_year="*", timezone="Europe/Paris")
    once = ClockedSchedule.objects.create(clocked_time=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    return {
        "interval": PeriodicTask.objects.create(name="db.interval", task="tests.add", interval=every_ten,
                                                args="[1, 2]", kwargs='{"password": "hunter2-db-secret"}',
                                                queue="beatq"),
        "cron": PeriodicTask.objects.create(name="db.cron", task="tests.report", crontab=nightly, enabled=False),
        "clocked": PeriodicTask.objects.create(name="db.clocked", task="tests.once", clocked=once, one_off=True),
    }


def test_database_rows_beside_the_static_schedule():
    tasks = _tasks()
    adapter = CeleryBeatSchedulerAdapter(celery_app=_app())
    assert DjangoCeleryBeatSource().available
    rows = {row.name: row for row in adapter.list_schedules()}
    assert set(rows) == {"static-tick", "db.interval", "db.cron", "db.clocked"}
    interval = rows["db.interval"]
    assert (interval.kind, interval.expression, interval.queue) == ("interval", "10", "beatq")
    assert interval.args == [1, 2] and interval.kwargs == {"password": "hunter2-db-secret"}
    assert interval.external_id == f"dcb:{tasks['interval'].pk}" and interval.source == DATABASE_SOURCE
    cron = rows["db.cron"]
    assert (cron.kind, cron.expression, cron.timezone, cron.is_enabled) == ("cron", "30 2 * * *", "Europe/Paris", False)
    assert rows["db.clocked"].kind == "clocked" and rows["db.clocked"].expression.startswith("2030-01-02T03:04:05")
    assert {"list", "trigger_now", "enable", "disable", "delete"} <= adapter.capabilities()
    assert adapter.get_schedule(f"dcb:{tasks['cron'].pk}").name == "db.cron"
    assert adapter.get_schedule("db.cron").name == "db.cron"


def test_enable_disable_delete_change_the_database_and_static_rows_stay_read_only():
    tasks = _tasks()
    adapter = CeleryBeatSchedulerAdapter(celery_app=_app())
    assert adapter.disable_schedule(f"dcb:{tasks['interval'].pk}").succeeded
    assert PeriodicTask.objects.get(pk=tasks["interval"].pk).enabled is False
    assert adapter.enable_schedule("db.cron").succeeded
    assert PeriodicTask.objects.get(pk=tasks["cron"].pk).enabled is True
    assert adapter.delete_schedule(f"dcb:{tasks['clocked'].pk}").succeeded
    assert not PeriodicTask.objects.filter(pk=tasks["clocked"].pk).exists()
    static = next(r for r in adapter.list_schedules() if r.name == "static-tick")
    for refused in (adapter.disable_schedule(static.external_id), adapter.delete_schedule(static.external_id)):
        assert not refused.succeeded and "read-only" in str(refused.error)
    assert not adapter.enable_schedule("dcb:999999").succeeded


def test_saves_signal_a_change_but_beats_own_bookkeeping_does_not():
    tasks = _tasks()
    adapter = CeleryBeatSchedulerAdapter(celery_app=_app())
    seen: list[str] = []
    adapter.connect_signals(lambda what, _detail: seen.append(what))
    try:
        periodic = PeriodicTask.objects.get(pk=tasks["interval"].pk)
        periodic.last_run_at = datetime.now(UTC)
        periodic.total_run_count = 1
        periodic.save(update_fields=["last_run_at", "total_run_count"])  # what beat does after each run
        assert seen == []
        periodic.queue = "other"
        periodic.save()
        PeriodicTask.objects.create(name="db.new", task="tests.add",
                                    interval=IntervalSchedule.objects.create(every=5, period="minutes"))
        periodic.delete()
    finally:
        adapter.disconnect_signals()
    assert seen == ["updated", "created", "deleted"]


def test_the_brain_lists_redacted_rows_and_its_disable_reaches_the_database():
    tasks = _tasks()
    with LocalBrain() as brain:
        creds = brain.mint_agent()
        runtime = install_agent(engines=[], schedulers=[CeleryBeatSchedulerAdapter(celery_app=_app())],
                                **creds.kwargs(), **FAST)
        try:
            rows = {row["name"]: row for row in brain.schedules.wait_for(4)}
            assert rows["db.interval"]["source"] == DATABASE_SOURCE and rows["static-tick"]["source"] != DATABASE_SOURCE
            assert "hunter2-db-secret" not in repr(rows)  # schedule kwargs are redacted like task kwargs
            command_id = brain.schedules.set_enabled(rows["db.interval"]["id"], False)
            assert brain.command(command_id).action == "schedule.external.control"  # no native writes
            assert brain.wait_for_command(command_id).status == "completed", brain.command(command_id)
            assert PeriodicTask.objects.get(pk=tasks["interval"].pk).enabled is False
            _wait_disabled(brain, "db.interval")
        finally:
            runtime.stop()


def _wait_disabled(brain: LocalBrain, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = brain.schedules.get(name)
        if row is not None and row["is_enabled"] is False:
            return
        time.sleep(0.05)
    raise AssertionError(f"the brain never showed {name} disabled: {brain.schedules.get(name)}")


def test_a_process_without_django_configured_shows_only_the_static_schedule():
    script = ("from celery import Celery\n"
              "from z4j_celerybeat import CeleryBeatSchedulerAdapter\n"
              "app = Celery('x', set_as_current=False)\n"
              "app.conf.beat_schedule = {'t': {'task': 'x', 'schedule': 5.0}}\n"
              "a = CeleryBeatSchedulerAdapter(celery_app=app)\n"
              "print(sorted(r.name for r in a.list_schedules()), sorted(a.capabilities()))\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['t'] ['external_schedule_stable_snapshot_v1', 'list', 'trigger_now']"

