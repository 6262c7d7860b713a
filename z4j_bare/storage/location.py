"""Where a buffer file lives: ``Z4J_HOME``, private directories, sibling names, the ``$TMPDIR``
fallback. Paths and permissions only: no SQLite, no locks.

One definition of each place, shared by the store (which opens files there) and by ``doctor``
and ``status`` (which only look).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MAX_SIBLINGS",
    "buffer_files_in",
    "check_private_dir",
    "fallback_dir",
    "fallback_root",
    "family_first",
    "family_pattern",
    "first_path",
    "lock_path_for",
    "sibling_paths",
    "side_files",
    "z4j_home",
]

MAX_SIBLINGS = 64
#: The names the agent gives buffer files under its home: ``buffer-<deployment>[-<n>].sqlite``
#: (and a Dramatiq family's ``buffer-<deployment>-dramatiq-<pid>.sqlite``). Deployment ids are
#: hex, so files beside a buffer (``buffer-<deployment>.schedules.sqlite``) do not match.
BUFFER_NAME = re.compile(r"buffer-[A-Za-z0-9_-]+\.sqlite\Z")


def z4j_home() -> Path:
    raw = os.environ.get("Z4J_HOME", "").strip()
    if raw:
        return Path(os.path.expandvars(raw)).expanduser().resolve()
    return Path("~/.z4j").expanduser()


def first_path(home: Path | None, deployment: str, buffer_path: Path | None = None) -> Path:
    """The file a deployment's owner tries first: ``buffer_path`` exactly, else
    ``<home>/buffer-<deployment>.sqlite`` (home defaults to ``z4j_home()``)."""
    if buffer_path is not None:
        first = Path(buffer_path).expanduser()
        return first if first.is_absolute() else Path.cwd() / first
    return Path(home if home is not None else z4j_home()) / f"buffer-{deployment}.sqlite"


def check_private_dir(path: Path, *, create: bool = True) -> str | None:
    """Make sure ``path`` is a directory we control; return why not, or ``None``.

    Created directories get mode 0700. An existing one must be ours and not writable by
    group/others: otherwise another user could plant or swap buffer files in it.
    """
    try:
        if create and not path.exists():
            path.mkdir(parents=True, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def fallback_dir() -> Path:
    """``$TMPDIR/z4j-<uid>``: where the agent relocates its buffer when its home is unusable.

    Only names the place (creates nothing); OSError when there is no usable temp directory.
    """
    return Path(tempfile.gettempdir()) / f"z4j-{os.geteuid()}"


def fallback_root() -> Path | None:
    """``fallback_dir()``, created private, or a fresh private sibling of it when someone else
    holds that name; ``None`` if no private directory can be had under $TMPDIR."""
    try:
        preferred = fallback_dir()
    except OSError:
        return None
    if check_private_dir(preferred) is None:
        return preferred
    try:
        return Path(tempfile.mkdtemp(prefix=f"{preferred.name}-", dir=preferred.parent))
    except OSError:
        return None


def sibling_paths(first: Path) -> Iterator[Path]:
    """``first``, then ``<stem>-1<suffix>``, ``-2``, ... (bounded)."""
    yield first
    for n in range(1, MAX_SIBLINGS):
        yield first.with_name(f"{first.stem}-{n}{first.suffix}")


def family_first(path: Path) -> Path:
    """The first name of the sibling family ``path`` belongs to (``x-3.sqlite`` -> ``x.sqlite``)."""
    stem = path.stem
    head, sep, tail = stem.rpartition("-")
    if sep and tail.isdigit() and head:
        stem = head
    return path.with_name(stem + path.suffix)


def family_pattern(first: Path) -> re.Pattern[str]:
    return re.compile(re.escape(first.stem) + r"(?:-\d+)?" + re.escape(first.suffix) + r"\Z")


def side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]


def lock_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def buffer_files_in(directory: Path) -> list[Path]:
    """The buffer files in ``directory``, sorted ([] if there is no such directory; OSError if it
    cannot be listed)."""
    if not directory.is_dir():
        return []
    return sorted(directory / n for n in os.listdir(directory)
                  if BUFFER_NAME.match(n) and (directory / n).is_file())
