"""TLS to the brain: verified by default, a private CA through ca_bundle, failures classified."""

from __future__ import annotations

import ssl
import subprocess
import time

import pytest

from recording_engine import RecordingEngine
from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config, ConfigError
from z4j_bare.testing import LocalBrain


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    run = lambda *args: subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=z4j test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "2", "-extfile", "ext.cnf")
    return d


@pytest.fixture
def tls_brain(certs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "srv.pem", certs / "srv.key")
    with LocalBrain(ssl_context=ctx, heartbeat_interval=1) as brain:
        yield brain


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.02)
    return pred()


def test_private_ca_via_ca_bundle(tls_brain, certs):
    creds = tls_brain.mint_agent()
    assert creds.brain_url.startswith("https://")
    engine = RecordingEngine()
    runtime = build_runtime(Config.resolve(**creds.kwargs(), ca_bundle=str(certs / "ca.pem")), [engine])
    runtime.start()
    assert _wait(lambda: runtime.state is RuntimeState.RUNNING)
    assert runtime.config.ws_url.startswith("wss://")
    engine.emit_task("tls-1", "task.received")
    assert runtime.flush(10)
    runtime.stop()
    assert tls_brain.event_count() == 1


def test_untrusted_certificate_is_refused_and_retried(tls_brain):
    creds = tls_brain.mint_agent()
    runtime = build_runtime(Config.resolve(**creds.kwargs(), backoff_max_connection=1.0), [RecordingEngine()])
    runtime.start()
    assert _wait(lambda: runtime.health()["failure_streaks"]["connection"] >= 1)
    assert "TLS failure" in runtime.health()["last_failure"] and "CERTIFICATE_VERIFY_FAILED" in runtime.health()["last_failure"]
    assert runtime.state is not RuntimeState.RUNNING
    runtime.stop(1)
    assert tls_brain.event_count() == 0


def test_verification_off_needs_dev_mode(tls_brain):
    creds = tls_brain.mint_agent()
    with pytest.raises(ConfigError, match="dev_mode"):
        Config.resolve(**creds.kwargs(), tls_verify=False)
