"""doctor against a real LocalBrain over real sockets: every failure names its cause and fix."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading

import pytest

from z4j_bare.diagnostics import PROBE_NAMES, SCHEMA, run_doctor
from z4j_bare.protocol import encode_hmac_secret
from z4j_bare.testing import LocalBrain

FULL_PATH = ["init", "connecting", "handshake", "running", "draining", "stopped"]


@pytest.fixture(scope="module")
def brain():
    with LocalBrain() as b:
        yield b


@pytest.fixture
def creds(brain, request):
    return brain.mint_agent(name=request.node.name[:60])


def _statuses(report):
    return {p.name: p.status for p in report.probes}


def _path(trace):
    return [trace[0]["source"]] + [e["dest"] for e in trace] if trace else []


def test_all_green_with_trace_and_proof_of_secret(brain, creds):
    report = run_doctor(creds.kwargs())
    assert report.ok, report.render_text()
    assert [p.name for p in report.probes] == list(PROBE_NAMES)
    assert _statuses(report) == {"config": "pass", "buffer_dir": "pass", "dns": "pass", "tcp": "pass",
                                 "tls": "skip", "websocket": "pass", "hello": "pass", "hmac": "pass", "longpoll": "pass",
                                 "skew": "pass", "runtime": "pass"}
    assert report.probe("hello").details["agent_id"] == creds.agent_id
    assert report.probe("hmac").details["reply"]["type"] == "event_batch_ack"
    assert _path(report.trace) == FULL_PATH
    assert all(e["elapsed_ms"] >= 0 for e in report.trace)
    # The empty signed batch stores nothing at the brain.
    assert brain.event_count() == 0
    text = report.render_text()
    assert "all green" in text and "HANDSHAKE -> RUNNING" in text
    assert creds.token not in text and creds.hmac_secret not in text
    assert creds.token not in report.to_json() and creds.hmac_secret not in report.to_json()
    rows = {r["name"]: r for r in report.probe("config").details["options"]}
    assert rows["token"]["value"] == "***" and rows["brain_url"]["source"] == "kwarg"


def test_bad_token_fails_hello_with_4401(creds):
    report = run_doctor({**creds.kwargs(), "token": "not-the-token"})
    assert not report.ok
    hello = report.probe("hello")
    assert hello.status == "fail" and "4401" in hello.message and "Z4J_TOKEN" in hello.fix
    assert report.probe("hmac").status == "skip"
    assert report.probe("websocket").status == "pass"
    assert report.probe("runtime").status == "fail"
    assert ("handshake", "connecting", "session_lost") in [(e["source"], e["dest"], e["trigger"]) for e in report.trace]


def test_wrong_hmac_secret_fails_the_hmac_probe(creds):
    other = encode_hmac_secret(os.urandom(32))  # valid 32-byte secret, not this agent's
    report = run_doctor({**creds.kwargs(), "hmac_secret": other})
    assert _statuses(report)["hello"] == "pass"  # the token alone is fine
    hmac_probe = report.probe("hmac")
    assert hmac_probe.status == "fail"
    assert "HMAC secret does not match this agent's token" in hmac_probe.message
    assert "Z4J_HMAC_SECRET" in hmac_probe.fix
    assert not report.ok


def test_port_closed(creds):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = run_doctor({**creds.kwargs(), "brain_url": f"http://127.0.0.1:{port}"}, timeout=2)
    tcp = report.probe("tcp")
    assert tcp.status == "fail" and "port closed" in tcp.message and tcp.fix
    assert [report.probe(n).status for n in PROBE_NAMES[4:]] == ["skip"] * len(PROBE_NAMES[4:])
    assert report.trace == []


def test_dns_failure(creds):
    report = run_doctor({**creds.kwargs(), "brain_url": "https://brain.z4j-doctor-test.invalid"})
    dns = report.probe("dns")
    assert dns.status == "fail" and "cannot resolve 'brain.z4j-doctor-test.invalid'" in dns.message
    assert "brain_url" in dns.fix
    assert report.probe("tcp").status == "skip" and not report.ok


def test_plain_ws_to_remote_host_is_refused_with_the_fix(creds):
    report = run_doctor({**creds.kwargs(), "brain_url": "ws://10.20.30.40:7700"})
    cfg = report.probe("config")
    assert cfg.status == "fail" and "plain http/ws to a non-loopback host" in cfg.message
    assert "https://" in cfg.fix
    assert report.probe("websocket").status == "skip" and report.trace == []


def test_no_websocket_stops_after_tls_and_opens_no_session(brain, creds):
    report = run_doctor(creds.kwargs(), websocket=False)
    assert report.ok
    assert [report.probe(n).status for n in ("websocket", "hello", "hmac", "runtime")] == ["skip"] * 4
    assert "--no-websocket" in report.probe("hello").message
    assert brain.agent(creds.agent_id)["sessions"] == 0 and report.trace == []


def test_config_errors_are_reported_not_raised(monkeypatch):
    report = run_doctor({"brain_url": "http://127.0.0.1:1"})
    cfg = report.probe("config")
    assert cfg.status == "fail" and "token" in cfg.message and "Z4J_HMAC_SECRET" in cfg.fix
    assert report.probe("tcp").status == "fail"  # the network is still probed with the URL we have


def test_pending_command_pushed_to_the_doctor_is_answered_failed(brain, creds):
    cid = brain.send_command("cancel_task", {"task_id": "t1"}, agent_id=creds.agent_id, engine="celery")
    report = run_doctor(creds.kwargs())
    assert report.ok
    record = brain.command(cid)
    assert record.status == "failed" and "doctor" in record.error


def test_buffer_dir_not_writable(creds, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores the mode; a file where the dir should be still fails
        locked = tmp_path / "file"
        locked.write_text("x")
    report = run_doctor({**creds.kwargs(), "home": str(locked / "z4j")}, websocket=False)
    probe = report.probe("buffer_dir")
    assert probe.status == "fail" and "Z4J_HOME" in probe.fix and "tmpfs" in probe.fix
    assert not report.ok


def test_json_schema_is_stable(creds):
    data = json.loads(run_doctor(creds.kwargs()).to_json())
    assert set(data) == {"schema", "ok", "agent_version", "protocol_version", "brain_url", "ws_url", "probes", "trace"}
    assert data["schema"] == SCHEMA and data["ok"] is True and data["protocol_version"] == "2"
    assert [p["name"] for p in data["probes"]] == list(PROBE_NAMES)
    for p in data["probes"]:
        assert set(p) == {"name", "status", "ok", "message", "fix", "details", "elapsed_ms"}
        assert p["status"] in ("pass", "warn", "fail", "skip") and isinstance(p["message"], str)
    for edge in data["trace"]:
        required = {"source", "dest", "trigger", "at", "elapsed_ms"}
        assert required <= set(edge) <= required | {"transport", "fallback", "failure_class", "reason", "retry_in_s",
                                                     "next_attempt_at"}


def _self_signed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return key, cert


def test_untrusted_tls_certificate(creds, tmp_path):
    key, cert = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        report = run_doctor({**creds.kwargs(), "brain_url": f"https://localhost:{port}"}, timeout=3)
        tls = report.probe("tls")
        assert tls.status == "fail" and "certificate rejected" in tls.message and "Z4J_CA_BUNDLE" in tls.fix
        # ... and trusting that certificate explicitly passes the TLS stage.
        trusted = run_doctor({**creds.kwargs(), "brain_url": f"https://localhost:{port}", "ca_bundle": str(cert)},
                             websocket=False, timeout=3)
        assert trusted.probe("tls").status == "warn"  # expires in < 14 days
        assert trusted.probe("tls").details["subject"] == "localhost"
    finally:
        stop.set()
        thread.join(2)
        server.close()


def test_doctor_probes_both_transports_and_says_which_works(creds):
    report = run_doctor({**creds.kwargs(), "transport": "longpoll"})
    assert report.ok, report.render_text()
    lp = report.probe("longpoll")
    assert lp.status == "pass" and lp.details["agent_id"] == creds.agent_id
    assert lp.details["transports"] == {"ws": True, "longpoll": True, "mode": "longpoll", "uses": "long-poll"}
    assert report.probe("runtime").details["transport"] == "longpoll"
    assert ("connecting", "handshake", "longpoll") in [(e["source"], e["dest"], e.get("transport")) for e in report.trace]
    assert "over longpoll" in report.render_text()


def test_doctor_with_a_wrong_secret_fails_long_poll_too(creds):
    other = encode_hmac_secret(os.urandom(32))
    report = run_doctor({**creds.kwargs(), "hmac_secret": other, "transport": "longpoll"})
    lp = report.probe("longpoll")
    assert lp.status == "fail" and "HMAC secret does not match" in lp.message and "409" in lp.message
    assert report.probe("hmac").status == "warn"  # not needed with transport=longpoll, still shown


def test_doctor_behind_a_proxy_that_refuses_upgrades(brain, creds):
    from upgrade_proxy import UpgradeRefusingProxy

    with UpgradeRefusingProxy(brain.port, status=400) as proxy:
        auto = run_doctor({**creds.kwargs(), "brain_url": proxy.url, "transport": "auto"})
        ws = run_doctor({**creds.kwargs(), "brain_url": proxy.url, "transport": "ws"})
    assert auto.ok, auto.render_text()
    assert auto.probe("websocket").status == "warn" and "HTTP 400" in auto.probe("websocket").message
    assert auto.probe("longpoll").details["transports"]["uses"] == "long-poll (a proxy refuses the upgrade)"
    assert auto.probe("runtime").details["transport"] == "longpoll"
    assert auto.probe("runtime").details["transport_fallback"]["reason"].startswith("upgrade refused with HTTP 400")
    assert not ws.ok and ws.probe("websocket").status == "fail" and ws.probe("longpoll").status == "pass"
    assert "transport=ws uses nothing" in ws.render_text()
