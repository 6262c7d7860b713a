"""The engines' host-side stores (Celery requests, Dramatiq messages) on their shared writer:
rows a busy file refused are kept and committed later, never swallowed, and a file that keeps
refusing costs bounded memory, counted."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from waiting import wait_for

from z4j_bare.engines.celery_store import RequestStore
from z4j_bare.engines.dramatiq_store import TAKEN, MessageStore
from z4j_bare.safety import error_counts


def _message_store(path, **kw):
    return MessageStore(path, linger=0.001, busy_timeout=0.05, **kw)


def _request_store(path, **kw):
    store = RequestStore(path, linger=0.001, **kw)
    store.busy_timeout = 0.05
    return store


STORES = {
    "dramatiq": (_message_store, lambda s, key: s.put(key, queue="q", actor="a", state=TAKEN, body=b"{}"),
                 "SELECT COUNT(*) FROM dramatiq_messages WHERE message_id = ?"),
    "celery": (_request_store, lambda s, key: s.put(key, {"name": "t", "args": [1], "kwargs": {}}),
               "SELECT COUNT(*) FROM celery_requests WHERE task_id = ?"),
}


def _stored(path, sql, key) -> bool:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, (key,)).fetchone()[0] == 1
    finally:
        conn.close()


@pytest.mark.parametrize("kind", sorted(STORES))
def test_rows_a_locked_file_refused_are_committed_once_it_is_free(tmp_path, caplog, kind):
    make, put, sql = STORES[kind]
    path = tmp_path / "store.sqlite"
    store = make(path)
    put(store, "first")
    store.flush()  # the file exists, with its tables
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process writing: the store's commits are refused
    before = dict(error_counts())
    with caplog.at_level(logging.DEBUG, logger="z4j_bare.engines.queued_store"):
        put(store, "held")
        wait_for(lambda: any(r.getMessage().startswith("store.refused") for r in caplog.records), 5.0,
                 "the writer never met the locked file")
        blocker.execute("COMMIT")
        wait_for(lambda: _stored(path, sql, "held"), 5.0, "the refused row never landed")
    assert error_counts() == before  # refused is not swallowed
    assert store.dropped == 0
    blocker.close()
    store.close()


@pytest.mark.parametrize("kind", sorted(STORES))
def test_a_file_that_keeps_refusing_bounds_the_queue_and_counts_what_it_dropped(tmp_path, kind):
    make, put, sql = STORES[kind]
    path = tmp_path / "store.sqlite"
    store = make(path, max_rows=1000)
    store.max_queued = 5
    put(store, "first")
    store.flush()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    for n in range(12):
        put(store, f"k{n}")  # past max_queued the caller's own flush is refused too: rows stay, bounded
        time.sleep(0.002)
    with pytest.raises(sqlite3.OperationalError):
        store.flush()
    assert store.dropped == 12 - store.max_queued  # every row went through a refusal; the newest 5 are kept
    blocker.execute("COMMIT")
    blocker.close()
    store.flush()
    assert _stored(path, sql, "k11") and not _stored(path, sql, "k0")  # the newest kept, the oldest dropped
    store.close()
