"""The agent is a guest: its records go through stdlib loggers, the host's config decides.

Real processes: a host script that owns its stdout and logs to a file at WARNING, and a real
``celery worker --loglevel=WARNING --logfile``, each with an agent that cannot reach its brain.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import structlog
from agent_records import agent_records
from celery_app.harness import REDIS_BROKER, Worker, unique_queue
from rq_app.harness import REDIS_URL

from z4j_bare.logs import get_logger, log_to_stderr, reset_console

TOKEN = "tok_" + "A" * 40
SECRET = "c2VjcmV0LWZvci10aGUtbG9nZ2luZy10ZXN0cy0wMTIzNDU2Nzg5"  # base64


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env.update(Z4J_HOME=str(home), Z4J_BRAIN_URL=f"http://127.0.0.1:{closed_port()}", Z4J_TOKEN=TOKEN,
               Z4J_HMAC_SECRET=SECRET, Z4J_PROJECT_ID="logging-test", Z4J_BACKOFF_MAX_CONNECTION="1")
    return env


HOST_SCRIPT = textwrap.dedent("""
    import json, logging, sys, threading, time
    logging.basicConfig(filename=sys.argv[1], level=logging.WARNING,
                        format="%(levelname)s %(name)s %(message)s")
    from z4j_bare import install_agent
    from z4j_rq import RqEngineAdapter

    runtime = install_agent(engines=[RqEngineAdapter(redis_url=sys.argv[2])])
    deadline = time.monotonic() + 4
    n = 0
    while time.monotonic() < deadline:   # the host's own protocol on stdout: one JSON object a line
        print(json.dumps({"n": n, "state": runtime.state.value}))
        n += 1
        time.sleep(0.002)
    runtime.stop(timeout=1)
    print(json.dumps({"n": n, "done": True}))
""")


def test_host_script_owns_stdout_and_its_logging_config(tmp_path):
    log_file = tmp_path / "host.log"
    proc = subprocess.run([sys.executable, "-c", HOST_SCRIPT, str(log_file), REDIS_URL], env=agent_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) > 50
    parsed = [json.loads(line) for line in lines]  # every line is the host's own, whole
    assert parsed[-1]["done"] is True and all("n" in p for p in parsed)
    assert proc.stderr == ""
    records = log_file.read_text().splitlines()
    failed = [r for r in records if "runtime.session_failed" in r]
    assert len(failed) == 1 and failed[0].startswith("WARNING z4j_bare.runtime "), records
    assert "retry_in_s=" in failed[0]
    # A person reads what is wrong and when the agent retries, then the fields.
    assert failed[0].startswith("WARNING z4j_bare.runtime runtime.session_failed: cannot reach the brain at "
                                "ws://127.0.0.1:"), failed
    assert " s (events wait in the local buffer; " in failed[0] and "; retrying in " in failed[0]
    assert " | backoff_class='connection' reason='connect failed: " in failed[0]
    assert all(r.split(" ", 1)[0] in {"WARNING", "ERROR", "CRITICAL"} for r in records if r[:1].isupper()), records
    assert "runtime.transition" not in "\n".join(records)  # an info record
    assert TOKEN not in log_file.read_text()


def test_celery_worker_at_warning_gets_no_agent_debug_or_info(tmp_path):
    log_file = tmp_path / "celery.log"
    home = tmp_path / "home"
    home.mkdir()
    env = agent_env(home)
    worker = Worker(queue=unique_queue(), broker=REDIS_BROKER, pool="prefork", boot="worker_init",
                    env={k: v for k, v in env.items() if k.startswith("Z4J_") and k != "Z4J_HOME"}, home=str(home),
                    extra=["--loglevel=WARNING", f"--logfile={log_file}"], log_path=str(tmp_path / "stdout.log"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "runtime.session_failed" not in _read(log_file):
            assert worker.proc.poll() is None, worker.log()
            time.sleep(0.2)
        time.sleep(4)  # several more failed attempts: the agent logs them at debug, which must stay out
    finally:
        worker.stop()
    text = _read(log_file)
    agent_lines = [line for line in text.splitlines() if "runtime." in line or "z4j" in line.lower()]
    assert sum("runtime.session_failed" in line for line in agent_lines) == 1, text
    for marker in ("runtime.transition", "[debug]", "[info]", "agent.", "outbox."):
        assert marker not in text, (marker, text)
    assert TOKEN not in text and TOKEN not in worker.log()


def test_rq_worker_class_shows_the_agents_warning_in_the_workers_output(tmp_path):
    # RQ gives only its `rq.worker` logger a handler; the agent's own worker class shows the
    # agent's warnings there, at the agent's level (WARNING: nothing below).
    from rq_app.harness import start_worker, stop_worker
    from rq_app.harness import unique_queue as rq_queue

    env = agent_env(tmp_path / "home")
    proc = start_worker("z4j_rq.Worker", [rq_queue("logging")], env)
    try:
        time.sleep(6)  # the first failure, then several quiet retries
    finally:
        out = stop_worker(proc)
    failed = [line for line in out.splitlines() if "runtime.session_failed" in line]
    assert len(failed) == 1, out
    assert "runtime.session_failed: cannot reach the brain at ws://127.0.0.1:" in failed[0], out
    assert "runtime.transition" not in out and "agent.already_installed" not in out, out
    assert TOKEN not in out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# -- the route itself, in process ----------------------------------------------------------------


@pytest.fixture
def records():
    # structlog.testing.capture_logs (other test files) leaves structlog "configured" for good,
    # which would send these records down the host-structlog route instead.
    structlog.reset_defaults()
    with agent_records(logging.DEBUG) as seen:
        yield seen


def test_records_carry_event_fields_and_are_scrubbed(records):
    get_logger("z4j_bare.test").warning("test.event", url="redis://:hunter2pass@cache:6379/0", n=3, token=TOKEN)
    (record,) = records
    assert record.name == "z4j_bare.test" and record.levelno == logging.WARNING
    assert record.getMessage().startswith("test.event ")
    assert record.z4j_event == "test.event" and record.z4j_fields["n"] == 3
    assert "hunter2pass" not in record.getMessage() and TOKEN not in record.getMessage()


def test_without_a_registered_scrubber_fields_are_dropped(records, monkeypatch):
    """logs.py cannot import the redactor (it sits below it): the package registers it, and a
    logs module left without one fails closed instead of writing fields unscrubbed."""
    from z4j_bare import logs

    monkeypatch.setattr(logs, "_scrubber_factory", None)
    monkeypatch.setattr(logs, "_scrubber", None)
    get_logger("z4j_bare.test").warning("test.unscrubbed", token=TOKEN)
    (record,) = records
    assert record.z4j_event == "test.unscrubbed" and TOKEN not in record.getMessage()
    assert "token" not in record.z4j_fields


def test_below_the_level_nothing_is_built(records):
    logging.getLogger("z4j_bare").setLevel(logging.WARNING)
    log = get_logger(__name__)
    log.info("test.quiet", expensive=object())
    log.debug("test.quiet")
    assert records == []
    assert log.name == "z4j_bare.test_logging"  # outside the package, names are put under z4j_bare


def test_host_structlog_pipeline_renders_scrubbed_events(records):
    captured: list[dict] = []
    structlog.configure(processors=[lambda _l, _m, ev: captured.append(dict(ev)) or ev,
                                    structlog.processors.KeyValueRenderer()],
                        logger_factory=structlog.ReturnLoggerFactory())
    try:
        get_logger("z4j_bare.test").error("test.host", password="s3cr3t-value", attempt=2)
    finally:
        structlog.reset_defaults()
    assert captured and captured[0]["event"] == "test.host" and captured[0]["attempt"] == 2
    assert "s3cr3t-value" not in json.dumps(captured)


def test_exceptions_are_rendered_and_scrubbed(records):
    try:
        raise ValueError("cannot reach amqp://guest:hunter22@rabbit:5672//")
    except ValueError:
        get_logger("z4j_bare.test").exception("test.failed")
    (record,) = records
    assert "ValueError" in record.getMessage() and "hunter22" not in record.getMessage()
    assert record.exc_info is None  # the scrubbed text replaces the raw traceback


def test_a_library_import_adds_only_a_null_handler(capsys):
    # Nothing configured by the host: the agent's warnings are not printed by logging's last resort.
    get_logger("z4j_bare.test").warning("test.unseen")
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert [type(h).__name__ for h in logging.getLogger("z4j_bare").handlers] == ["NullHandler"]


def test_entry_point_console_json(capsys):
    log_to_stderr("info", json_lines=True)
    try:
        get_logger("z4j_bare.cli").info("cli.hello", engines=["rq"])
    finally:
        reset_console()
    out, err = capsys.readouterr()
    assert out == ""
    line = json.loads(err.strip())
    assert line["event"] == "cli.hello" and line["engines"] == ["rq"] and line["level"] == "info"


def test_a_summary_leads_the_text_and_stays_a_field(records):
    get_logger("z4j_bare.test").warning("test.failed", summary="cannot reach the brain; retrying in 2 s", n=1)
    (record,) = records
    assert record.getMessage() == "test.failed: cannot reach the brain; retrying in 2 s | n=1"
    assert record.z4j_fields == {"summary": "cannot reach the brain; retrying in 2 s", "n": 1}


def test_python_json_logger_gets_the_event_and_its_fields(records):
    # docs/logging.md: a stdlib host with python-json-logger's formatter.
    import io

    from pythonjsonlogger.json import JsonFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    logging.getLogger("z4j_bare").addHandler(handler)
    try:
        get_logger("z4j_bare.runtime").warning("runtime.session_failed", summary="cannot reach the brain",
                                               retry_in_s=1.5, token=TOKEN)
    finally:
        logging.getLogger("z4j_bare").removeHandler(handler)
    line = json.loads(out.getvalue())
    assert line["levelname"] == "WARNING" and line["name"] == "z4j_bare.runtime"
    assert line["z4j_event"] == "runtime.session_failed" and line["z4j_fields"]["retry_in_s"] == 1.5
    assert line["message"].startswith("runtime.session_failed: cannot reach the brain | ")
    assert TOKEN not in out.getvalue()


def test_host_structlog_with_processor_formatter_renders_agent_json(records):
    # docs/logging.md: the structlog documentation's stdlib recipe, rendering JSON lines.
    import io

    out = io.StringIO()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, structlog.stdlib.add_logger_name, structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(), wrapper_class=structlog.stdlib.BoundLogger)
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer()))
    logging.getLogger("z4j_bare").addHandler(handler)
    try:
        get_logger("z4j_bare.runtime").warning("runtime.session_failed", retry_in_s=1.5, password="s3cr3t-value")
        get_logger("z4j_bare.runtime").info("runtime.transition", source="init")
    finally:
        logging.getLogger("z4j_bare").removeHandler(handler)
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"event": "runtime.session_failed", "retry_in_s": 1.5, "password": lines[0]["password"],
                        "logger": "z4j_bare.runtime", "level": "warning"}
    assert "s3cr3t-value" not in out.getvalue()
