"""docs/configuration.md must be exactly what scripts/gen_config_docs.py renders from OPTIONS."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from z4j_bare.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_doc_matches_generator():
    rendered = _load_generator().render()
    assert DOC.read_text(encoding="utf-8") == rendered, (
        "docs/configuration.md is stale: run python scripts/gen_config_docs.py"
    )


def test_doc_covers_every_option_and_the_rules():
    text = _load_generator().render()
    for opt in OPTIONS:
        assert f"| `{opt.name}` |" in text, opt.name
        assert opt.env in text, opt.env
    assert "Precedence" in text and "empty value counts as unset" in text
    assert '["a,b", "c"]' in text  # the list-format note
    assert "| option | env var | type | default | description |" in text


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def test_check_mode_passes_on_the_committed_doc():
    result = _run("--check")
    assert result.returncode == 0, result.stderr


def test_check_mode_fails_on_drift_and_write_fixes_it(tmp_path):
    target = tmp_path / "configuration.md"
    target.write_text(DOC.read_text(encoding="utf-8").replace("Z4J_HEARTBEAT_SECONDS", "Z4J_HEARTBEAT"))
    result = _run("--check", "--output", str(target))
    assert result.returncode == 1
    assert "out of date" in result.stderr and "+| `heartbeat_seconds`" in result.stderr

    assert _run("--check", "--output", str(tmp_path / "absent.md")).returncode == 1

    assert _run("--output", str(target)).returncode == 0
    assert _run("--check", "--output", str(target)).returncode == 0
    assert target.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
