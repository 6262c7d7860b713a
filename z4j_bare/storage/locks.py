"""The sidecar locks that say who is using a buffer file.

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
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ADOPTER", "OWNER", "WRITER", "LockBusy", "SidecarLock", "owner_holds"]

OWNER = "owner"
WRITER = "writer"
ADOPTER = "adopter"

_HAVE_OFD = hasattr(fcntl, "F_OFD_SETLK")
# struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
# (l_pid must be 0 for OFD locks).
_FLOCK = "hhqqi"


class LockBusy(Exception):
    """The sidecar lock is held by another live process."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def _ofd(fd: int, ltype: int, start: int, length: int = 1) -> bool:
    arg = struct.pack(_FLOCK, ltype, os.SEEK_SET, start, length, 0)
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

    def unlink(self) -> None:
        """Remove the lock file while still holding it (see ``acquire``'s re-check)."""
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def owner_holds(lock_path: Path) -> tuple[bool, int | None]:
    """Is a live process holding the owner lock, and the pid the owner wrote? Tested with
    F_OFD_GETLK, so it never takes the lock (safe next to a live agent, as another user)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False, None
    try:
        pid = _read_pid(fd)
        cmd = getattr(fcntl, "F_OFD_GETLK", None)
        if cmd is None:
            return pid is not None and _pid_alive(pid), pid
        answer = fcntl.fcntl(fd, cmd, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0))
        return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK, pid
    except OSError:
        return False, None
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
