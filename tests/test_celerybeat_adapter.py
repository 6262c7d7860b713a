"""celery-beat adapter: the static beat_schedule mapping vectors, and a real trigger run by a real worker."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import celery.schedules
import pytest
from celery import Celery
from celery.schedules import crontab
from celery_app.harness import BACKEND, REDIS_BROKER, Worker, unique_queue

from z4j_bare.protocol.schedules import normalize_external_schedule
from z4j_bare.schedulers.celerybeat import CeleryBeatSchedulerAdapter, StaticBeatScheduleSource, static_external_id
from z4j_celerybeat import CeleryBeatSchedulerAdapter as Shim

V = json.loads((Path(__file__).parent / "schedule_vectors.json").read_text("utf-8"))
NAMESPACE = {"crontab": crontab, "timedelta": timedelta, "celery": celery}


def _entry(vector):
    entry = dict(vector["entry"])
    entry["schedule"] = eval(entry["schedule"], NAMESPACE)
    return entry


@pytest.fixture
def beat_app():
    app = Celery("beat-vectors", set_as_current=False)
    app.conf.beat_schedule = {v["name"]: _entry(v) for v in V["celerybeat_static_mapping"]}
    return app


def test_the_shim_is_the_adapter():
    assert Shim is CeleryBeatSchedulerAdapter


def test_static_mapping_vectors(beat_app):
    adapter = CeleryBeatSchedulerAdapter(celery_app=beat_app)
    rows = {r.name: r for r in adapter.list_schedules()}
    assert list(rows) == [v["name"] for v in V["celerybeat_static_mapping"]]
    for vector in V["celerybeat_static_mapping"]:
        raw = rows[vector["name"]].to_raw()
        for key, want in vector["schedule_fields"].items():
            if key in ("metadata", "overlap_policy"):
                assert getattr(rows[vector["name"]], key) == want
            else:
                assert raw[key] == want, (vector["name"], key)
        assert normalize_external_schedule(raw, "celery-beat") == vector["normalized"]


def test_external_id_rule_and_app_timezone():
    rule = V["celerybeat_static_external_id_rule"]
    assert static_external_id(rule["name"]) == rule["external_id"]
    tz = V["celerybeat_crontab_timezone"]
    app = Celery("tz", set_as_current=False)
    app.conf.timezone = tz["app_timezone"]
    app.conf.beat_schedule = {"x": {"task": "t", "schedule": crontab(minute=0)}}
    [row] = StaticBeatScheduleSource(celery_app=app).list_schedules()
    assert row.timezone == tz["timezone_field"]


def test_static_only_capabilities_and_read_only_answers(beat_app):
    adapter = CeleryBeatSchedulerAdapter(celery_app=beat_app)
    assert adapter.advertised_capabilities() == ["external_schedule_stable_snapshot_v1", "list", "trigger_now"]
    ext = static_external_id("nightly-report")
    assert adapter.get_schedule(ext).name == "nightly-report"
    assert adapter.get_schedule("nightly-report").external_id == ext
    assert adapter.get_schedule("dcb:1") is None and adapter.get_schedule("static:nope") is None
    for result in (adapter.disable_schedule(ext), adapter.enable_schedule(ext), adapter.delete_schedule(ext)):
        assert result.status == "failed" and "read-only" in result.error
    assert CeleryBeatSchedulerAdapter(celery_app=None).advertised_capabilities() == [
        "external_schedule_stable_snapshot_v1", "list"]
    with pytest.raises(NotImplementedError):
        adapter.create_schedule({})


def test_custom_sources_lose_the_stable_snapshot_token(beat_app):
    class Mine(StaticBeatScheduleSource):
        pass

    adapter = CeleryBeatSchedulerAdapter(celery_app=beat_app, sources=[Mine(beat_app)])
    assert "external_schedule_stable_snapshot_v1" not in adapter.capabilities()


def test_trigger_now_sends_the_task_and_a_real_worker_runs_it(tmp_path):
    queue = unique_queue("beat")
    app = Celery("beat-trigger", broker=REDIS_BROKER, backend=BACKEND, set_as_current=False)
    app.conf.beat_schedule = {"add-every-hour": {"task": "z4jtest.add", "schedule": crontab(minute=0),
                                                 "args": (20, 22), "options": {"queue": queue}}}
    adapter = CeleryBeatSchedulerAdapter(celery_app=app)
    worker = Worker(queue=queue, broker=REDIS_BROKER, pool="solo", boot="none", home=str(tmp_path))
    try:
        result = adapter.trigger_now(static_external_id("add-every-hour"))
        assert result.status == "success", result.error
        assert result.result["task_name"] == "z4jtest.add"
        assert app.AsyncResult(result.result["task_id"]).get(timeout=60) == 42, worker.log()
    finally:
        worker.stop()
    missing = adapter.trigger_now("static:" + "0" * 64)
    assert missing.status == "failed" and "not found" in missing.error
