"""The reference agent (z4j-bare/celery/rq 1.13.0) in its own virtualenv, for benchmarks only.

The project never imports these packages: benchmarks run them as separate processes through
``ref_python()``. Run those processes with ``-P`` (or ``-I``) or from a directory outside the
checkout, otherwise ``import z4j_bare`` resolves to *our* package in the working directory.

    .venv/bin/python bench/refagent.py           # install if needed, verify, print the python path
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_REQUIREMENTS = (
    "z4j-bare==1.13.0",
    "z4j-celery==1.13.0",
    "z4j-rq==1.13.0",
    # same engine versions as the project venv, so overhead comparisons are like for like
    "celery>=5.7,<5.8",
    "rq>=3.0,<3.1",
    "redis>=5",
    "packaging",  # kombu 5.7's Redis transport needs it
)
IMPORT_CHECK = (
    "import importlib.metadata as m, z4j_bare, z4j_celery, z4j_rq, celery, rq, redis, packaging;"
    "assert m.version('z4j-bare') == '1.13.0', m.version('z4j-bare');"
    "assert 'site-packages' in z4j_bare.__file__, z4j_bare.__file__;"
    "print(m.version('z4j-bare'), m.version('z4j-core'), celery.__version__, rq.__version__)"
)
_MARKER = ".z4j-ref-ok"


class RefAgentError(RuntimeError):
    """The reference agent virtualenv could not be built or does not import."""


def ref_venv_dir() -> Path:
    return Path(os.environ.get("Z4J_REF_VENV") or REPO / ".bench" / "ref-venv")


def _check(python: Path) -> str | None:
    """Versions line if the venv imports cleanly, else None. ``-I``: never see the checkout."""
    if not python.is_file():
        return None
    try:
        out = subprocess.run([str(python), "-I", "-c", IMPORT_CHECK], capture_output=True, text=True, check=False,
                             timeout=120, cwd="/")  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_ref_venv(venv: Path | None = None) -> Path:
    """Build (once) and verify the reference-agent venv; returns its directory."""
    venv = Path(venv) if venv else ref_venv_dir()
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / _MARKER).is_file() and _check(python):
            return venv
        print(
            f"refagent: installing the reference agent into {venv}",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        for cmd, what in (
            ([base, "-m", "venv", str(venv)], "create the venv"),
            (
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    *REFERENCE_REQUIREMENTS,
                ],
                "pip install",
            ),
        ):
            out = subprocess.run(
                cmd, capture_output=True, text=True, check=False, timeout=900, cwd="/"
            )
            if out.returncode != 0:
                tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
                raise RefAgentError(
                    f"could not {what} for the reference agent (exit {out.returncode}):\n{tail}"
                )
        if not _check(python):
            raise RefAgentError(
                f"{venv}: the reference agent installed but does not import"
            )
        (venv / _MARKER).write_text("\n".join(REFERENCE_REQUIREMENTS) + "\n")
        return venv


def ref_python() -> Path:
    """Interpreter of the reference-agent venv (built on first use)."""
    return ensure_ref_venv() / "bin" / "python"


def main() -> int:
    python = ref_python()
    print(python)
    print(_check(python))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
