"""The read-only view of buffer files, for ``doctor`` and ``z4j-bare status``.

Opens files read-only, tests the owner lock with F_OFD_GETLK, reads spool files without locking
them: it never takes a lock and never writes, so it is safe next to a live agent and as another
user. What it reports is what the file holds plus what is still spooled; loss counts a live
agent holds only in memory (a full disk) reach the file once the disk has room again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from . import entries, ingest, location, locks, loss
from .schema import read_meta

__all__ = ["buffer_places", "read_buffer"]


def buffer_places(home: str | Path | None) -> tuple[Path, list[tuple[str, Path]]]:
    """(the home, [(where, directory)]): the home (default ``Z4J_HOME`` or ``~/.z4j``) and the
    ``$TMPDIR`` fallback the agent relocates to when the home is unusable."""
    root = Path(home).expanduser() if home is not None else location.z4j_home()
    places = [("home", root)]
    fallback = location.fallback_dir()
    if fallback != root:
        places.append(("fallback", fallback))
    return root, places


def read_buffer(path: Path) -> dict[str, Any]:
    """What one buffer file holds: ids, depth by kind (spooled records included), the oldest
    entry's age, the loss ledger, and whether a live agent owns it. Errors go in ``error``."""
    info: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
    held, pid = locks.owner_holds(location.lock_path_for(path))
    info["owner_pid"] = pid if held else None
    info["owner_alive"] = held
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0, isolation_level=None)
    except sqlite3.Error as exc:
        info["error"] = f"cannot open read-only: {exc}"
        return info
    try:
        conn.execute("PRAGMA busy_timeout=2000")
        info.update(_contents(conn, path))
    except sqlite3.Error as exc:
        reason = str(exc)
        if "unable to open" in reason or "readonly" in reason or "permission" in reason.lower():
            reason += " (run status as the agent's user, e.g. sudo -u <service-user> z4j-bare status)"
        info["error"] = f"cannot read: {reason}"
    finally:
        conn.close()
    return info


def _contents(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    meta = read_meta(conn)
    depth, oldest, by_kind = 0, None, {}
    for kind, n, first in entries.by_kind(conn):
        by_kind[kind] = n
        depth += n
        oldest = first if oldest is None else min(oldest, first)
    # Records still in spool files (written, not yet moved into SQLite by the owner); the ``~loss``
    # records among them are loss counts on their way to the ledger.
    spooled, spooled_loss = loss.split_records(ingest.spooled_rows(path, ingest.read_offsets(conn)))
    for kind, _body, _engine, _size, created_at in spooled:
        by_kind[kind] = by_kind.get(kind, 0) + 1
        oldest = created_at if oldest is None else min(oldest, created_at)
    counts = loss.read_persisted(conn) + [(k, e, n) for (k, e), n in spooled_loss.items()]
    return {
        "buffer_id": meta.get("buffer_id"),
        "deployment": meta.get("deployment"),
        "spooled": len(spooled),
        "depth": depth + len(spooled),
        "by_kind": by_kind,
        "oldest_age_seconds": None if oldest is None else round(max(0.0, time.time() - oldest), 1),
        "loss": loss.shape(counts),
    }
