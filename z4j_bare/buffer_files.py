"""Where the buffer lives on disk, and the sidecar locks that say who is using it.

Kept apart from ``buffer.py`` so the SQLite logic reads on its own: this module only
knows about directories, file names, permissions and advisory locks.

Lock protocol (one ``<buffer>.lock`` sidecar per buffer file, Linux OFD byte-range locks,
which belong to an open file description, so they die with the last process holding it):

* byte 0, exclusive: the **owner** (the draining agent). Forked children close their copy
  of the owner's descriptor, so the lock dies with the owner.
* byte 1, shared: every other live **writer** (forked children, non-owner stores).
* an **adopter** (or an owner removing an empty file) needs byte 0 *and* byte 1
  exclusively: a file is never adopted or removed while any process may still append.

Without OFD locks (non-Linux), ``flock`` gives the owner lock only (degraded: live
children of a dead owner are not protected from adoption).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ADOPTER",
    "OWNER",
    "WRITER",
    "LockBusy",
    "SidecarLock",
    "check_private_dir",
    "fallback_root",
    "family_pattern",
    "is_sqlite_header",
    "sibling_paths",
    "side_files",
    "z4j_home",
]

OWNER = "owner"
WRITER = "writer"
ADOPTER = "adopter"

_HAVE_OFD = hasattr(fcntl, "F_OFD_SETLK")
_SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_SIBLINGS = 64


class LockBusy(Exception):
    """The sidecar lock is held by another live process."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def _ofd(fd: int, ltype: int, start: int, length: int = 1) -> bool:
    # struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
    # (l_pid must be 0 for OFD locks).
    arg = struct.pack("hhqqi", ltype, os.SEEK_SET, start, length, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@dataclass(eq=False)
class SidecarLock:
    """An open ``.lock`` descriptor and the role it was taken for."""

    path: Path
    fd: int
    role: str

    @classmethod
    def acquire(cls, path: Path, role: str) -> SidecarLock:
        """Take ``role`` on ``path`` without blocking; ``LockBusy`` if a live process holds it.

        Re-checks after locking that the path still names the locked inode: a lock file
        may be unlinked by whoever removed the buffer, and a lock on an unlinked inode
        protects nothing.
        """
        for _ in range(16):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if not cls._lock(fd, role):
                    raise LockBusy(_read_pid(fd))
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                if role == OWNER:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, str(os.getpid()).encode(), 0)
                return cls(path, fd, role)
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
        raise LockBusy(None)

    @staticmethod
    def _lock(fd: int, role: str) -> bool:
        if not _HAVE_OFD:
            if role == WRITER:
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        if role == OWNER:
            return _ofd(fd, fcntl.F_WRLCK, 0)
        if role == WRITER:
            return _ofd(fd, fcntl.F_RDLCK, 1)
        # adopter: everything, all at once, so a half-taken lock never blocks others.
        return _ofd(fd, fcntl.F_WRLCK, 0, 2)

    def upgrade_to_exclusive(self) -> bool:
        """Owner only: also take the writers byte, i.e. prove no other process appends."""
        if not _HAVE_OFD:
            return True
        if _ofd(self.fd, fcntl.F_WRLCK, 1):
            return True
        return False

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def forget_in_child(self) -> None:
        """Close an inherited copy without unlocking: the parent still holds the lock."""
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def z4j_home() -> Path:
    raw = os.environ.get("Z4J_HOME", "").strip()
    if raw:
        return Path(os.path.expandvars(raw)).expanduser().resolve()
    return Path("~/.z4j").expanduser()


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


def fallback_root() -> Path | None:
    """A private directory under $TMPDIR for this uid, or ``None`` if none can be had."""
    uid = os.geteuid()
    try:
        base = Path(tempfile.gettempdir())
    except (OSError, FileNotFoundError):
        return None
    preferred = base / f"z4j-{uid}"
    if check_private_dir(preferred) is None:
        return preferred
    try:
        return Path(tempfile.mkdtemp(prefix=f"z4j-{uid}-", dir=base))
    except OSError:
        return None


def sibling_paths(first: Path):
    """``first``, then ``<stem>-1<suffix>``, ``-2``, ... (bounded)."""
    yield first
    for n in range(1, MAX_SIBLINGS):
        yield first.with_name(f"{first.stem}-{n}{first.suffix}")


def family_pattern(first: Path) -> re.Pattern[str]:
    return re.compile(re.escape(first.stem) + r"(?:-\d+)?" + re.escape(first.suffix) + r"\Z")


def side_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]


def is_sqlite_header(path: Path) -> bool | None:
    """True/False for a SQLite/non-SQLite file; None for an empty file (a fresh database)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return None
    return head == _SQLITE_MAGIC
