"""Opening a buffer: which file (the configured one, a free sibling, or the ``$TMPDIR``
fallback), and making it ready (set aside if unusable, create, initialise)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..logs import get_logger
from . import location
from .recovery import set_aside
from .schema import (
    BufferStorageError,
    OtherDeploymentError,
    UnwritableError,
    connect,
    initialise,
    inspect,
)

__all__ = ["FIX_HOME", "open_for_deployment", "prepare_file"]

log = get_logger(__name__)

FIX_HOME = "set Z4J_HOME or buffer_path to a writable persistent directory"

Store = TypeVar("Store")


def prepare_file(path: Path, *, owner: bool, deployment: str,
                 also: Callable[[sqlite3.Connection], None] | None) -> tuple[sqlite3.Connection, dict[str, str]]:
    """The file at ``path`` as a ready buffer: (its writer connection, its meta).

    An unusable file is set aside by an owner (a non-owner refuses); a missing one is created
    0600; ``also`` runs inside the initialising transaction.
    """
    set_aside_now = 0
    if path.exists() or path.is_symlink():
        problem = inspect(path)
        if problem is not None:
            if not owner:
                raise BufferStorageError(f"buffer {path} is unusable ({problem}); the owning "
                                         "agent sets it aside on its next start")
            set_aside(path, problem)
            set_aside_now = 1
    if not path.exists():
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        except FileExistsError:
            pass  # another process of the family created it first: fine
        except OSError as exc:
            raise UnwritableError(f"cannot create buffer file {path}: {exc.strerror}; {FIX_HOME}") from None
    conn = None
    try:
        conn = connect(path, role="writer")
        meta = initialise(conn, path, deployment=deployment, corrupt_set_aside=set_aside_now, also=also)
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise BufferStorageError(f"cannot initialise buffer {path}: {exc}") from None
    if deployment and meta.get("deployment", deployment) != deployment:
        conn.close()
        raise OtherDeploymentError(f"buffer {path} belongs to another deployment")
    try:
        os.chmod(path, 0o600)
    except OSError:
        pass
    return conn, meta


def open_for_deployment(factory: Callable[..., Store], home: Path | None, deployment: str,
                        buffer_path: Path | None, caps: dict[str, Any]) -> tuple[Store, str | None]:
    """``factory(path, owner=True, deployment=..., **caps)`` on the first free file of this
    deployment; (the store, why the configured directory was not used, or None)."""
    if not deployment or not all(c.isalnum() or c in "-_." for c in deployment) or len(deployment) > 64:
        raise ValueError("deployment must be 1-64 characters of [A-Za-z0-9._-] "
                         f"(got {len(deployment)} characters)")
    first = location.first_path(home, deployment, buffer_path)
    reason = location.check_private_dir(first.parent)
    if reason is None:
        store, reason = _first_free(factory, first, deployment, caps)
        if store is not None:
            return store, None
    root = location.fallback_root()
    store = None
    why_not = "no private directory could be created under $TMPDIR"
    if root is not None:
        store, why_not = _first_free(factory, root / first.name, deployment, caps)
    if store is None:
        raise BufferStorageError(
            f"no writable location for the z4j buffer: {reason}; fallback: {why_not}. "
            "Fix: set Z4J_HOME (or buffer_path) to a persistent directory this user can write.")
    log.warning("buffer.relocated", path=str(store.path), wanted=str(first), reason=reason,
                fix="set Z4J_HOME or buffer_path to a persistent directory owned by this user; "
                    "buffered events under $TMPDIR may be lost on reboot")
    return store, reason


def _first_free(factory: Callable[..., Store], first: Path, deployment: str,
                caps: dict[str, Any]) -> tuple[Store | None, str]:
    last = f"all {location.MAX_SIBLINGS} buffer names next to {first} are in use"
    for candidate in location.sibling_paths(first):
        try:
            return factory(candidate, owner=True, deployment=deployment, **caps), ""
        except UnwritableError as exc:
            return None, str(exc)
        except BufferStorageError as exc:  # locked, another deployment's, unusable: next name
            last = str(exc)
    return None, last
