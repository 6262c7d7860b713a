"""A new user's first contact with bad input: one clear line naming the setting and the fix, or
a truthful doctor stage; never a traceback, never a false PASS (issue 16, part 3)."""

from __future__ import annotations

import json
import logging
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from z4j_bare.buffer import BufferStore
from z4j_bare.cli import main
from z4j_bare.config import Config, ConfigError
from z4j_bare.diagnostics import run_doctor
from z4j_bare.logs import reset_console

SECRET = "c2VjcmV0LWZvci10aGUtbG9nZ2luZy10ZXN0cy0wMTIzNDU2Nzg5"
CREDS = ["--brain-url", "http://127.0.0.1:1", "--token", "tok_" + "A" * 40, "--hmac-secret", SECRET,
         "--project-id", "first-contact"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    reset_console()


def _run(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- doctor's buffer stage does what the buffer does ------------------------------------------------


def test_doctor_buffer_stage_fails_where_the_buffer_cannot_live_and_names_the_runtimes_fallback(tmp_path):
    # /proc refuses new directories even to root, for whom os.access() says yes to everything.
    home = Path("/proc") / f"z4j-doctor-{os.getpid()}"
    report = run_doctor({"brain_url": "http://127.0.0.1:1", "token": "tok_abc", "hmac_secret": SECRET,
                         "project_id": "p", "home": str(home)}, websocket=False)
    probe = report.probe("buffer_dir")
    fallback = probe.details["fallback"]
    assert probe.status == "fail"
    assert probe.message.startswith(f"the buffer directory is unusable: cannot create {home}: ")
    assert (f"the agent would move its buffer to {fallback} (checked: writable), which is wiped on reboot "
            "when /tmp is a tmpfs") in probe.message
    assert "Z4J_HOME=/var/lib/z4j" in probe.fix
    # ... and the runtime really goes there.
    store = BufferStore.open_for_deployment(home, f"doctor-fallback-{os.getpid()}")
    try:
        assert str(store.path.parent) == fallback and store.fallback_reason
    finally:
        store.close()
        for path in Path(fallback).glob(f"{store.path.name}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_doctor_buffer_stage_writes_a_file_where_the_buffer_will_live_and_leaves_nothing(tmp_path):
    home = tmp_path / "not" / "yet"
    report = run_doctor({"brain_url": "http://127.0.0.1:1", "token": "tok_abc", "hmac_secret": SECRET,
                         "project_id": "p", "home": str(home)}, websocket=False)
    probe = report.probe("buffer_dir")
    assert probe.status == "pass", probe.message
    assert probe.message.startswith(f"{home} is creatable by the agent (mode 0700): a test file was created, "
                                    "written, fsynced and removed")
    assert not (tmp_path / "not").exists()  # what the probe made, it removed


# -- a token that cannot be a bearer token ------------------------------------------------------------


@pytest.mark.parametrize(("token", "what", "position"), [
    ("tok_abc def", "whitespace", 8),
    ("tok_abc\ndef", "whitespace", 8),
    ("tok_abc\x07def", "a control character", 8),
    ('"tok_abcdef"', "a character that cannot be in a bearer token", 1),
])
def test_a_token_with_whitespace_or_control_characters_is_refused_at_config_time(monkeypatch, token, what, position):
    monkeypatch.setenv("Z4J_TOKEN", token)
    with pytest.raises(ConfigError) as err:
        Config.resolve(brain_url="http://127.0.0.1:1", hmac_secret=SECRET, project_id="p")
    assert str(err.value) == (
        f"token (env Z4J_TOKEN) contains {what} (character {position} of {len(token)}): got '***' from the "
        "environment (Z4J_TOKEN). Fix: set Z4J_TOKEN to the token exactly as the brain showed it (urlsafe base64: "
        "no spaces, line breaks or quotes inside).")
    assert err.value.option == "token"


def test_a_token_keeps_working_with_a_trailing_newline_from_a_file():
    config = Config.resolve(env={}, brain_url="http://127.0.0.1:1", token="tok_abc-_.~+/==\n", hmac_secret=SECRET,
                            project_id="p")
    assert config.token.reveal() == "tok_abc-_.~+/=="


def test_run_refuses_a_bad_token_flag_naming_the_flag(capsys):
    code, _, err = _run(capsys, "run", "--rq-url", "redis://127.0.0.1:1/0", *CREDS[:2], "--token", "a b", *CREDS[4:])
    assert code == 2
    assert err == ("z4j-bare run: token (env Z4J_TOKEN) contains whitespace (character 2 of 3): got '***' from "
                   "--token. Fix: pass --token the token exactly as the brain showed it (urlsafe base64: no spaces, "
                   "line breaks or quotes inside) (or leave it out and set Z4J_TOKEN).\n")


# -- a missing extra says which one -------------------------------------------------------------------

_WITHOUT = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None   # as if the package were not installed
    exec(sys.argv[2])
""")


def _without(modules: str, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    return subprocess.run([sys.executable, "-c", _WITHOUT, modules, code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)


def test_missing_extras_name_the_extra_to_install():
    cli = "from z4j_bare.cli import main; sys.exit(main(sys.argv[3:]))"
    run = _without("redis,rq", cli.replace("sys.argv[3:]", repr(["run", "--rq-url", "redis://127.0.0.1:1/0", *CREDS])))
    assert (run.returncode, run.stderr) == (2, "z4j-bare run: RqEngineAdapter needs redis, which is not installed: "
                                               "pip install 'z4j-bare[rq]'\n")
    demo = _without("websockets", cli.replace("sys.argv[3:]", "['demo']"))
    assert (demo.returncode, demo.stderr) == (2, "z4j-bare demo: the demo needs websockets, which is not installed: "
                                                 "pip install 'z4j-bare[demo]'\n")
    brain = _without("websockets", cli.replace("sys.argv[3:]", "['brain']"))
    assert (brain.returncode, brain.stderr) == (2, "z4j-bare brain: the local brain needs websockets, which is not "
                                                   "installed: pip install 'z4j-bare[brain]'\n")
    shim = _without("redis,rq", "from z4j_rq import RqEngineAdapter")
    assert shim.stderr.splitlines()[-1] == ("z4j_bare.engines.extras.MissingExtra: z4j_rq (the RQ engine) needs rq, "
                                            "which is not installed: pip install 'z4j-bare[rq]'")
    local = _without("websockets", "from z4j_bare.testing import LocalBrain")
    assert local.stderr.splitlines()[-1] == ("ModuleNotFoundError: the local brain (z4j_bare.testing) needs websockets, "
                                             "which is not installed: pip install 'z4j-bare[brain]'")


# -- run: configuration first -------------------------------------------------------------------------


def test_run_reports_the_configuration_before_the_engines(capsys):
    code, _, err = _run(capsys, "run", "--app", "no_such_module:app")
    assert code == 2
    assert err.startswith("z4j-bare run: missing required z4j configuration: brain_url (Z4J_BRAIN_URL), token "
                          "(Z4J_TOKEN), hmac_secret (Z4J_HMAC_SECRET), project_id (Z4J_PROJECT_ID). Fix: set each "
                          "environment variable, or pass its flag (z4j-bare run --help)."), err
    code, _, err = _run(capsys, "run")  # both wrong: both said, the configuration first
    assert code == 2 and err.splitlines()[1] == ("z4j-bare run: run needs an engine: --app MODULE:ATTR (Celery) "
                                                 "and/or --rq-url redis://... (RQ)"), err
    assert err.splitlines()[0].startswith("z4j-bare run: missing required z4j configuration: ")
    code, _, err = _run(capsys, "run", "--app", "no_such_module:app", *CREDS)  # config fine: now the engine
    assert code == 2 and err.startswith("z4j-bare run: --app 'no_such_module:app': cannot import 'no_such_module'")


# -- global flags after the command -------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["status", "--log-level", "debug"],
    ["doctor", "--no-websocket", "--log-level=debug", *CREDS],
    ["brain", "--log-level", "debug", "--help"],
    ["demo", "--help", "--log-level", "debug"],
])
def test_log_level_is_accepted_after_the_command_and_sets_the_console(capsys, tmp_path, argv):
    argv = [*argv, "--home", str(tmp_path)] if argv[0] == "status" else argv
    code, out, err = _run(capsys, *argv)
    assert code in (0, 1) and "usage:" not in err, err
    assert logging.getLogger("z4j_bare").level == logging.DEBUG
    if argv[0] in ("brain", "demo"):
        assert "--log-level" not in out  # the sub-tool got its own arguments only


# -- doctor on a terminal -----------------------------------------------------------------------------


def _silent_server() -> socket.socket:
    """Accepts TCP connections and never answers: a TLS handshake against it hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def _run_on_a_terminal(argv: list[str], timeout: float = 60) -> tuple[list[tuple[float, str]], float, int]:
    """(seconds since start, line) for each line the command wrote, when it exited, its code."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "z4j_bare", *argv], stdout=slave, stderr=slave, cwd=REPO, env=env)
    os.close(slave)
    lines: list[tuple[float, str]] = []
    pending = b""
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                pending += chunk
                *done, pending = pending.split(b"\n")
                lines += [(time.monotonic() - start, d.decode().rstrip("\r")) for d in done]
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
        ended = time.monotonic() - start
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return lines, ended, code


def test_doctor_prints_each_stage_as_it_finishes_on_a_terminal():
    with _silent_server() as server:
        port = server.getsockname()[1]
        argv = ["doctor", "--brain-url", f"https://127.0.0.1:{port}", "--token", "tok_abc", "--hmac-secret", SECRET,
                "--project-id", "p", "--timeout", "3"]
        lines, ended, code = _run_on_a_terminal(argv)
    text = "\n".join(line for _, line in lines)
    assert code == 1, text
    seen = {line.split()[1]: at for at, line in lines if line.startswith("  ") and len(line.split()) > 1
            and line.split()[0] in ("PASS", "WARN", "FAIL", "SKIP")}
    assert "FAIL  tls        TLS handshake with 127.0.0.1:" in text, text
    # tcp passed and was on the screen while the TLS handshake was still hanging (3 s).
    assert ended - seen["tcp"] > 2.0, lines
    assert lines[-1][1] == "1 problem(s): tls. Fix the first one first: later stages depend on it."


def test_doctor_json_on_a_terminal_is_only_the_json():
    lines, _, code = _run_on_a_terminal(["doctor", "--no-websocket", "--json", *CREDS])
    data = json.loads("\n".join(line for _, line in lines))
    assert data["schema"] == "z4j-bare.doctor/1" and code == 1  # nothing listens on port 1


def test_doctor_help_says_which_stages_talk_to_the_brain_and_what_it_shows(capsys):
    code, out, _ = _run(capsys, "doctor", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "config, buffer_dir, dns, tcp and tls send nothing to it." in text
    assert ("websocket, hello, hmac and runtime open sessions with the brain as this agent: the brain marks the "
            "agent online and shows the doctor's engine list (\"doctor\", no capabilities) until the real worker's "
            "next hello") in text
    assert "--no-websocket stops after tls: nothing is sent." in text
