"""The processes of one ``dramatiq`` command, and the one agent they share.

``dramatiq app`` starts a supervisor (which never imports the app), N worker processes and the
fork processes that middleware ask for (docs/dramatiq.md, "Process model"). The z4j middleware
asks for one fork process: **the agent process**, which holds the brain session and owns the
command's buffer (the *family* buffer). Worker processes never connect: they append their
events to that buffer's spool as non-owner writers, so there is one brain session per
``dramatiq`` command however many workers it runs, and a worker that dies has already made
every event it produced durable (the kernel holds its spool file; the agent ingests it).

Everyone finds the family buffer without talking to anyone: its name is derived from the
configuration (home or buffer_path, and the deployment id of the HMAC key) and the supervisor's
pid, which every worker and fork process sees as its parent. The agent process stops once the
supervisor asked it to and no worker is left writing (each worker holds the buffer's shared
"writer" lock for its whole life; see ``storage/locks``).

This module stays below the runtime: the agent process's entry point (which calls
``install_agent``) lives in the ``z4j_dramatiq`` package and registers itself here.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..logs import get_logger

if TYPE_CHECKING:
    from ..config import Config
    from .base import EventSink

log = get_logger(__name__)

WORKER = "worker"      # a worker process of the dramatiq CLI
AGENT = "agent"        # the z4j agent process (a dramatiq fork process)
FORK = "fork"          # another fork process of the dramatiq CLI
PLAIN = "plain"        # anything else: a producer, a test, a programmatic Worker

_lock = threading.Lock()
_role_override: str | None = None
_agent_entry: Callable[[], int] | None = None
_adapters: dict[int, Any] = {}
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)


# -- roles ---------------------------------------------------------------------------------------
def process_role() -> str:
    if _role_override is not None:
        return _role_override
    target = getattr(multiprocessing.current_process(), "_target", None)
    if target is None:
        return PLAIN
    try:
        from dramatiq import cli
    except Exception:  # noqa: BLE001 - dramatiq's CLI module failed to import: not its child
        return PLAIN
    if target is cli.worker_process:
        return WORKER
    if target is cli.fork_process:
        return FORK
    return PLAIN


def enter_agent_role() -> None:
    """Called first thing by the agent process, before it imports the app module."""
    global _role_override
    _role_override = AGENT


def register_agent_entry(entry: Callable[[], int]) -> None:
    """The ``z4j_dramatiq`` package registers its agent-process entry point (a module function)."""
    global _agent_entry
    _agent_entry = entry


def agent_entry() -> Callable[[], int] | None:
    return _agent_entry


def register_adapter(broker: Any, adapter: Any) -> None:
    with _lock:
        _adapters[id(broker)] = (broker, adapter)


def adapter_for(broker: Any) -> Any | None:
    with _lock:
        found = _adapters.get(id(broker))
    return found[1] if found is not None and found[0] is broker else None


# -- where the family lives ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FamilyPaths:
    buffer: Path
    deployment: str


def family_paths(config: Config, supervisor_pid: int) -> FamilyPaths:
    from ..protocol import deployment_id

    deployment = deployment_id(config.key)
    if config.buffer_path is not None:
        first = Path(config.buffer_path).expanduser()
        if not first.is_absolute():
            first = Path.cwd() / first
        name = f"{first.stem}-dramatiq-{supervisor_pid}{first.suffix or '.sqlite'}"
        return FamilyPaths(first.with_name(name), deployment)
    from ..storage.location import z4j_home

    home = Path(config.home) if config.home is not None else z4j_home()  # as open_for_deployment does
    return FamilyPaths(home / f"buffer-{deployment}-dramatiq-{supervisor_pid}.sqlite", deployment)


def message_store_path(buffer_path: Path, deployment: str) -> Path:
    """One message store per deployment and directory, shared by every dramatiq command."""
    return buffer_path.with_name(f"dramatiq-messages-{deployment or 'default'}.sqlite")


def resolve_config() -> Config:
    from ..config import Config

    return Config.resolve()


def build_redactor(config: Config) -> Any:
    from ..redaction import Redactor

    return Redactor(
        extra_key_patterns=config.redaction_extra_key_patterns,
        extra_value_patterns=config.redaction_extra_value_patterns,
        max_value_bytes=config.max_payload_bytes,
        max_event_bytes=config.max_event_bytes,
    )


def open_writer_sink(config: Config, engine: str) -> EventSink:
    """A worker process's sink: the family buffer opened as a non-owner writer."""
    from ..buffer import BufferStorageError, BufferStore
    from ..safety import set_strict_mode
    from ..storage.location import check_private_dir, fallback_root
    from .base import EventSink

    if config.strict_mode:
        set_strict_mode(True)
    paths = family_paths(config, os.getppid())
    path = paths.buffer
    if check_private_dir(path.parent) is not None:
        root = fallback_root()  # the same choice BufferStore.open_for_deployment makes in the agent
        if root is None:
            raise BufferStorageError(f"z4j dramatiq worker: {path.parent} is unusable and no fallback "
                                     "directory exists; set Z4J_HOME to a writable directory")
        path = root / path.name
    caps = {"max_rows": config.buffer_max_events, "max_bytes": config.buffer_max_bytes,
            "spool": config.buffer_spool}
    last: Exception | None = None
    for _ in range(50):
        try:
            buffer = BufferStore(path, owner=False, deployment=paths.deployment, **caps)
            return EventSink(engine, buffer, build_redactor(config))
        except BufferStorageError as exc:
            # An owner setting aside a damaged file, or an adopter checking an orphan, holds the
            # lock for an instant: try again for a second before giving up.
            last = exc
            time.sleep(0.02)
    raise BufferStorageError(f"z4j dramatiq worker: cannot open the command's buffer: {last}")


# -- is any worker still writing? ----------------------------------------------------------------
def writers_present(buffer_path: Path) -> bool | None:
    """True while some process holds the family buffer's writer lock; None if unknowable.

    Asked with ``F_OFD_GETLK`` (would an exclusive lock on the writers byte conflict?), so the
    probe never takes the lock and never gets in the way of a worker opening the buffer.
    """
    getlk = getattr(fcntl, "F_OFD_GETLK", None)
    if getlk is None:
        return None
    lock_path = buffer_path.with_name(buffer_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        answer = fcntl.fcntl(fd, getlk, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 1, 1, 0))
        return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK
    except OSError:
        return None
    finally:
        os.close(fd)


# -- the agent process's command line -------------------------------------------------------------
def cli_arguments(argv: list[str]) -> Any:
    """The supervisor's arguments, parsed the way ``dramatiq`` parsed them (a fork keeps argv)."""
    from dramatiq.cli import make_argument_parser

    return make_argument_parser().parse_args(argv[1:])


def import_app(args: Any) -> Any:
    """Import the broker module and the extra modules like a worker does; return the broker."""
    import importlib

    from dramatiq.cli import import_broker

    _, broker = import_broker(args.broker)
    for module in args.modules:
        importlib.import_module(module)
    return broker
