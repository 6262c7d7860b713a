"""The wheel a user installs: typed packages, the license, metadata, extras and bounds.

Built from a copy of the project's files (the working tree stays clean), with this virtualenv's
setuptools (no build isolation: a few seconds, no network).
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import z4j_bare

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("z4j_bare", "z4j_celery", "z4j_rq", "z4j_celerybeat", "z4j_rqscheduler", "z4j_dramatiq")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for package in sorted(ROOT.glob("z4j_*")):  # every top-level package, also ones added later
        if (package / "__init__.py").exists():
            shutil.copytree(package, src / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("z4j_bare-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_every_package_is_marked_typed(wheel):
    names = set(wheel.namelist())
    top_level = {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/__init__.py")}
    assert set(PACKAGES) <= top_level
    for package in top_level:  # a new top-level package needs its own (empty) py.typed file
        assert f"{package}/py.typed" in names, package
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_license_file_is_apache_2_and_matches_the_declared_license(wheel):
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    (lic,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(lic).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_one_version_source(wheel):
    assert _metadata(wheel)["Version"] == z4j_bare.__version__
    assert not re.search(r'(?m)^version\s*=\s*"', (ROOT / "pyproject.toml").read_text())  # no second copy


def test_metadata_a_user_and_their_tools_read(wheel):
    meta = _metadata(wheel)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Homepage"].startswith("https://")
    classifiers = meta.get_all("Classifier")
    assert "Operating System :: POSIX" in classifiers
    assert not any(c.startswith("Operating System :: Microsoft") or c == "Operating System :: OS Independent"
                   for c in classifiers)
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    assert {"celery", "rq", "z4j"} <= set(meta["Keywords"].split(","))
    assert meta["Requires-Python"] == ">=3.11"
    entry_points = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "z4j-bare = z4j_bare.cli:main" in wheel.read(entry_points[0]).decode()


def test_extras_and_engine_bounds_match_what_ci_runs(wheel):
    meta = _metadata(wheel)
    extras = set(meta.get_all("Provides-Extra"))
    assert {"celery", "rq", "brain", "demo"} <= extras
    requires = meta.get_all("Requires-Dist")
    demo = [r for r in requires if r.endswith('extra == "demo"')]
    assert demo == ['z4j-bare[brain,celery,dramatiq,rq]; extra == "demo"'], demo
    # The lower bounds are what `make test-oldest` installs (constraints-oldest.txt); the upper
    # bounds keep out the next major release, which CI has not run.
    oldest = dict(line.split("==") for line in (ROOT / "constraints-oldest.txt").read_text().split()
                  if "==" in line)
    assert f'rq<4,>={oldest["rq"]}; extra == "rq"' in requires, requires
    assert f'celery<6,>={oldest["celery"]}; extra == "celery"' in requires, requires
    assert f'dramatiq[rabbitmq,redis]<3,>={oldest["dramatiq"]}; extra == "dramatiq"' in requires, requires
    assert f'rq-scheduler<0.15,>={oldest["rq-scheduler"]}; extra == "rqscheduler"' in requires, requires
    assert f'websockets<18,>={oldest["websockets"]}; extra == "brain"' in requires, requires


def test_version_flag(capsys):
    from z4j_bare.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"z4j-bare {z4j_bare.__version__}\n"


def test_readme_says_what_to_install_before_the_checkout_commands():
    readme = (ROOT / "README.md").read_text()
    first = readme.index("pip install")
    assert first < readme.index("make demo") and first < readme.index("make test")
    for line in ('pip install "z4j-bare[celery]"', 'pip install "z4j-bare[rq]"', 'pip install "z4j-bare[demo]"'):
        assert line in readme, line
