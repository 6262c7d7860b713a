"""Agent configuration: one frozen ``Config`` resolved from keyword arguments, env vars and defaults.

Precedence, highest first:

1. **Explicit keyword arguments** (to `Config.resolve` or `install_agent`). A keyword of
   `None` means "not given" and falls through to the next source. An empty string `""`
   means "use the built-in default" and stops the environment from being consulted.
2. **`Z4J_*` environment variables.** An empty value counts as unset.
3. **Built-in defaults.** `brain_url`, `token`, `hmac_secret` and `project_id` have none: a
   missing one is reported, together with every other missing one, in a single `ConfigError`.

Two safety switches are **keyword only**: `dev_mode` and `tls_verify` are never read from the
environment (a stray `Z4J_DEV_MODE` must not downgrade a production host). If the variable is
set anyway it is ignored and a `config.<option>_env_ignored` warning is logged.

Value formats in the environment:

- Booleans: `1`, `true`, `yes`, `on` / `0`, `false`, `no`, `off` (any case). Anything else is
  an error, never silently false.
- Lists (`redaction_extra_*_patterns`): a JSON array of strings when the value starts with
  `[` (so a pattern may contain a comma: `["a,b", "c"]`), otherwise comma-separated values
  (`a,b,c`; blanks around items are dropped). Keyword arguments accept a list, a tuple or a
  string in either format. Each pattern must be a valid regular expression.
- Tags: a JSON object when the value starts with `{`, otherwise `key=value,key2=value2`.
- Paths: `~` is expanded.

Secrets (`token`, `hmac_secret`) are held in `Secret` and never appear in `repr`, `str`,
`describe()` or an error message; a `brain_url` with `user:password@` is shown masked too.
"""

from __future__ import annotations

import hmac as _hmac
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from z4j_bare.protocol import decode_hmac_secret, require_key_length

from .logs import get_logger

__all__ = ["OPTIONS", "OPTIONS_BY_NAME", "Config", "ConfigError", "Option", "Secret", "Tags", "options_help_text"]

_log = get_logger(__name__)

MASK = "***"
_MIB = 1024 * 1024


class ConfigError(ValueError):
    """A missing or invalid setting. The message names the option, its env var, the offending
    value (masked for secrets) and how to fix it; ``problems`` holds one line per problem."""

    def __init__(self, message: str, *, option: str | None = None, env: str | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.option = option
        self.env = env
        self.problems = problems or (message,)


class Secret:
    """A secret string that refuses to show itself: ``repr``/``str``/``format`` give
    ``Secret('***')``; ``reveal()`` is the one explicit way to the clear text.

    Pickling is refused so a secret never lands in a result backend or a crash dump by accident.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, not {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant-time so equality checks cannot be used as a timing oracle.
        return _hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("Secret values cannot be pickled (they would be written in clear)")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict) -> Secret:
        return self


class Tags(dict):
    """Read-only ``dict`` of tag strings: JSON-serializable like a dict, but a frozen Config
    cannot be changed through it."""

    def _readonly(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Config.tags is read-only; pass tags= when resolving the config")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> Any:
        return (Tags, (dict(self),))

    def __copy__(self) -> Tags:
        return self

    def __deepcopy__(self, memo: dict) -> Tags:
        return self


KINDS = ("str", "secret", "bool", "int", "float", "list", "tags", "path", "choice")


@dataclass(frozen=True)
class Option:
    """One row of the configuration table. For ``str`` options ``minimum``/``maximum`` bound the
    length; for numbers they bound the value. ``required`` options have no default."""

    name: str
    env: str
    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    env_allowed: bool = True
    required: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")

    def type_text(self) -> str:
        """Human type with bounds, e.g. ``int (>= 1000)`` or ``choice: auto | ws``."""
        if self.kind == "choice":
            return "choice: " + " | ".join(self.choices or ())
        text = {"secret": "secret str", "tags": "key=value map", "list": "list of regex"}.get(self.kind, self.kind)
        unit = " chars" if self.kind == "str" else ""
        lo, hi = _num_text(self.minimum), _num_text(self.maximum)
        if lo is not None and hi is not None:
            text += f" ({lo}..{hi}{unit})"
        elif lo is not None:
            text += f" (>= {lo}{unit})"
        elif hi is not None:
            text += f" (<= {hi}{unit})"
        return text

    def default_text(self) -> str:
        if self.required:
            return "required"
        value = self.default
        if value is None:
            return "unset"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return "[]" if not value else json.dumps(list(value))
        if isinstance(value, dict):
            return json.dumps(value)
        if isinstance(value, str):
            return f'"{value}"'
        return str(value)

    def env_text(self) -> str:
        return self.env if self.env_allowed else f"none ({self.env} is ignored)"


def _num_text(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else str(value)


#: The default of an option that has none: it must be given (keyword or environment).
REQUIRED: Any = MISSING
_OPTION_KEY = "z4j_option"


def _option(kind: str, default: Any, doc: str, **extra: Any) -> Any:
    """A ``Config`` field that is also a row of ``OPTIONS``: the one place its default is written."""
    meta = MappingProxyType({_OPTION_KEY: {"kind": kind, "doc": doc, **extra}})
    return field(metadata=meta) if default is REQUIRED else field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Parsing. Each parser takes the raw value (str from env, anything from a kwarg, or an already
# parsed value: Config re-validates its own fields, so every parser must be idempotent) and
# raises _Invalid(problem, want) on bad input.


class _Invalid(Exception):
    def __init__(self, problem: str, want: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem, self.want, self.fix = problem, want, fix


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(opt: Option, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Invalid("is not a boolean", "one of 1/true/yes/on or 0/false/no/off")


def _bounds_want(opt: Option, noun: str) -> str:
    lo, hi = _num_text(opt.minimum), _num_text(opt.maximum)
    if lo is not None and hi is not None:
        return f"{noun} between {lo} and {hi}"
    if lo is not None:
        return f"{noun} >= {lo}"
    if hi is not None:
        return f"{noun} <= {hi}"
    return noun


def _check_bounds(opt: Option, value: float, noun: str) -> None:
    if (opt.minimum is not None and value < opt.minimum) or (opt.maximum is not None and value > opt.maximum):
        raise _Invalid("is out of range", _bounds_want(opt, noun))


def _parse_int(opt: Option, raw: Any) -> int:
    want = _bounds_want(opt, "a whole number")
    if isinstance(raw, bool):
        raise _Invalid("is a boolean, not a number", want)
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise _Invalid("is not a whole number", want) from None
    else:
        raise _Invalid(f"has type {type(raw).__name__}, not int", want)
    _check_bounds(opt, value, "a whole number")
    return value


def _parse_float(opt: Option, raw: Any) -> float:
    want = _bounds_want(opt, "a number")
    if isinstance(raw, bool):
        raise _Invalid("is a boolean, not a number", want)
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid("is not a number", want) from None
    else:
        raise _Invalid(f"has type {type(raw).__name__}, not a number", want)
    if not math.isfinite(value):
        raise _Invalid("is not a finite number", want)
    _check_bounds(opt, value, "a number")
    return value


def _parse_str(opt: Option, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"has type {type(raw).__name__}, not str", "a string")
    value = raw.strip()
    if (opt.minimum is not None and len(value) < opt.minimum) or (
            opt.maximum is not None and len(value) > opt.maximum):
        lo, hi = _num_text(opt.minimum) or "0", _num_text(opt.maximum)
        raise _Invalid(f"is {len(value)} characters long",
                       f"text of {lo}..{hi} characters" if hi else f"text of at least {lo} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise _Invalid("contains control characters", "printable text")
    return value


def _parse_secret(opt: Option, raw: Any) -> Secret:
    if isinstance(raw, Secret):
        raw = raw.reveal()
    if not isinstance(raw, str):
        raise _Invalid(f"has type {type(raw).__name__}, not str", "the string the brain returned")
    return Secret(raw.strip())


def _parse_choice(opt: Option, raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"has type {type(raw).__name__}, not str", "one of " + ", ".join(opt.choices or ()))
    value = raw.strip().lower()
    if opt.name == "transport" and value in ("long-poll", "long_poll"):
        value = "longpoll"
    if value not in (opt.choices or ()):
        raise _Invalid("is not a known choice", "one of " + ", ".join(opt.choices or ()))
    return value


def _parse_path(opt: Option, raw: Any) -> Path:
    if isinstance(raw, str):
        raw = raw.strip()
        if not raw:
            raise _Invalid("is blank", "a filesystem path")
    elif not isinstance(raw, os.PathLike):
        raise _Invalid(f"has type {type(raw).__name__}, not a path", "a filesystem path")
    path = Path(raw).expanduser()
    if opt.name == "ca_bundle" and not path.is_file():
        raise _Invalid("does not name an existing file", "the path of a readable PEM CA bundle",
                       fix=f"point {opt.env} / ca_bundle= at an existing PEM file, or unset it to use "
                           "the system trust store")
    return path


def _parse_list(opt: Option, raw: Any) -> tuple[str, ...]:
    want = 'a JSON array of strings like ["a,b", "c"] or comma-separated values like a,b'
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise _Invalid(f"starts with '[' but is not valid JSON ({exc.msg} at position {exc.pos})",
                               want) from None
            if not isinstance(items, list):
                raise _Invalid("is JSON but not an array", want)
        else:
            items = text.split(",")
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise _Invalid(f"has type {type(raw).__name__}, not a list", want)
    result = []
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(f"contains a {type(item).__name__} item ({item!r})", want)
        item = item.strip()
        if not item:
            continue
        try:
            re.compile(item)
        except re.error as exc:
            raise _Invalid(f"contains an invalid regular expression {item!r} ({exc})",
                           "valid Python regular expressions") from None
        result.append(item)
    return tuple(result)


_TAG_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def _parse_tags(opt: Option, raw: Any) -> Tags:
    want = 'key=value pairs like team=payments,tier=1 or a JSON object like {"team": "payments"}'
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                pairs = json.loads(text)
            except ValueError as exc:
                raise _Invalid(f"starts with '{{' but is not valid JSON ({exc.msg} at position {exc.pos})",
                               want) from None
            if not isinstance(pairs, dict):
                raise _Invalid("is JSON but not an object", want)
        else:
            pairs = {}
            for part in text.split(","):
                if not part.strip():
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise _Invalid(f"has an entry without '=' ({part.strip()!r})", want)
                pairs[key.strip()] = value.strip()
    elif isinstance(raw, Mapping):
        pairs = dict(raw)
    else:
        raise _Invalid(f"has type {type(raw).__name__}, not a mapping", want)
    result = {}
    for key, value in pairs.items():
        if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
            raise _Invalid(f"has an invalid key {key!r}", "keys of 1..64 letters, digits or _ . : / -")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _Invalid(f"has a non-text value for {key!r}", want)
        result[key] = str(value)
    return Tags(result)


_PARSERS = {
    "str": _parse_str, "secret": _parse_secret, "bool": _parse_bool, "int": _parse_int,
    "float": _parse_float, "list": _parse_list, "tags": _parse_tags, "path": _parse_path,
    "choice": _parse_choice,
}


# ---------------------------------------------------------------------------------------------
# URL rules


def mask_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (safe to log)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/@]*@", f"//{MASK}@", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def _host_is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_URL_WANT = "an https:// (or wss://) URL with a host, e.g. https://z4j.example.com"


def _parse_brain_url(opt: Option, raw: Any) -> str:
    value = _parse_str(opt, raw)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _Invalid("is not a valid URL", _URL_WANT) from None
    if parts.scheme.lower() not in ("http", "https", "ws", "wss"):
        raise _Invalid("must use the https, wss, http or ws scheme", _URL_WANT)
    if not parts.hostname:
        raise _Invalid("has no host", _URL_WANT)
    if parts.query or parts.fragment:
        raise _Invalid("must not carry a query string or fragment", _URL_WANT)
    return value


def _check_url_security(url: str, dev_mode: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() in ("http", "ws") and not dev_mode and not _host_is_loopback(parts.hostname):
        raise _Invalid(
            "uses plain http/ws to a non-loopback host, which would send the token unencrypted",
            _URL_WANT,
            fix="use an https:// (or wss://) URL, or pass dev_mode=True in code for a lab setup "
                "(plain http is always allowed for localhost, 127.x.x.x and ::1)",
        )


def _parse_hmac_secret(opt: Option, raw: Any) -> Secret:
    secret = _parse_secret(opt, raw)
    try:
        require_key_length(decode_hmac_secret(secret.reveal()))
    except ValueError as exc:
        # protocol.keys never puts the key into its messages, so this is safe to show.
        reason = str(exc).split(" (use ")[0]
        raise _Invalid(f"is invalid ({reason})", "the hmac_secret the brain returned when the agent was created "
                                 "(urlsafe base64, 44 characters)") from None
    return secret


# RFC 6750's b64token: what may follow "Bearer " in the header. The brain's tokens are urlsafe base64.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")


def _parse_token(opt: Option, raw: Any) -> Secret:
    """Outer whitespace (a trailing newline from a file) is dropped; anything else that cannot be
    a bearer token is refused here, before it is put into the Authorization header."""
    secret = _parse_secret(opt, raw)
    text = secret.reveal()
    body = text.rstrip("=")
    for position, ch in enumerate(body, 1):
        if ch in _TOKEN_CHARS:
            continue
        # Name the kind of character and where, never the token itself.
        what = ("whitespace" if ch.isspace() else "a control character" if ord(ch) < 32 or ord(ch) == 127
                else "a character that cannot be in a bearer token")
        raise _Invalid(f"contains {what} (character {position} of {len(text)})",
                       "the token exactly as the brain showed it (urlsafe base64: no spaces, line breaks "
                       "or quotes inside)")
    return secret


_SPECIAL_PARSERS = {"brain_url": _parse_brain_url, "hmac_secret": _parse_hmac_secret, "token": _parse_token}


# ---------------------------------------------------------------------------------------------
# Error text


def _shown(opt: Option, raw: Any) -> str:
    if opt.kind == "secret":
        return repr(MASK)
    if opt.name == "brain_url" and isinstance(raw, str):
        return repr(mask_url(raw))
    text = repr(str(raw) if isinstance(raw, os.PathLike) else raw)
    return text if len(text) <= 120 else text[:117] + "..."


def _where(opt: Option, origin: str) -> str:
    if origin == "env":
        return f"from the environment ({opt.env})"
    if origin == "kwarg":
        return f"from the {opt.name}= argument"
    return "from the default"


def _env_label(opt: Option) -> str:
    return f"env {opt.env}" if opt.env_allowed else f"keyword only; {opt.env} is ignored"


def _problem_text(opt: Option, origin: str, raw: Any, err: _Invalid) -> str:
    if err.fix:
        fix = err.fix
    elif origin == "env":
        fix = f"set {opt.env} to {err.want}"
        if not opt.required:
            fix += f", or unset it to use the default ({opt.default_text()})"
    else:
        fix = f"pass {opt.name}= {err.want}"
        if opt.env_allowed:
            fix += f" (or leave it out and set {opt.env})"
    return f"{opt.name} ({_env_label(opt)}) {err.problem}: got {_shown(opt, raw)} {_where(opt, origin)}. Fix: {fix}."


def _raise(problems: list[tuple[Option, str]]) -> None:
    if not problems:
        return
    lines = tuple(text for _, text in problems)
    if len(lines) == 1:
        opt = problems[0][0]
        raise ConfigError(lines[0], option=opt.name, env=opt.env, problems=lines)
    message = f"{len(lines)} z4j configuration problems:\n" + "\n".join(f"  - {line}" for line in lines)
    raise ConfigError(message, option=problems[0][0].name, env=problems[0][0].env, problems=lines)


def _missing_text(opt: Option) -> str:
    return f"{opt.name} (env {opt.env}) is required but missing. Fix: set {opt.env} or pass {opt.name}=."


def _validate(raw: Mapping[str, tuple[Any, str]]) -> dict[str, Any]:
    """Parse every option's (value, origin) and apply the cross-option rules; raise one
    ConfigError listing everything wrong."""
    values: dict[str, Any] = {}
    problems: list[tuple[Option, str]] = []
    missing: list[Option] = []
    for opt in OPTIONS:
        value, origin = raw[opt.name]
        if value is None:
            if opt.required:
                missing.append(opt)
            values[opt.name] = None
            continue
        parser = _SPECIAL_PARSERS.get(opt.name) or _PARSERS[opt.kind]
        try:
            parsed = parser(opt, value)
        except _Invalid as err:
            problems.append((opt, _problem_text(opt, origin, value, err)))
            continue
        if opt.required and not parsed:
            missing.append(opt)
        values[opt.name] = parsed
    # Cross-option rules, checked only when their inputs parsed, so one run reports everything.
    dev_mode = bool(values.get("dev_mode"))
    url_opt = OPTIONS_BY_NAME["brain_url"]
    if values.get("brain_url") and "dev_mode" in values:
        try:
            _check_url_security(values["brain_url"], dev_mode)
        except _Invalid as err:
            problems.append((url_opt, _problem_text(url_opt, raw["brain_url"][1], values["brain_url"], err)))
    if values.get("tls_verify") is False and "dev_mode" in values and not dev_mode:
        opt = OPTIONS_BY_NAME["tls_verify"]
        err = _Invalid("is False without dev_mode", "True", fix=(
            "keep TLS verification on (trust a private CA with ca_bundle= / Z4J_CA_BUNDLE), or pass "
            "dev_mode=True together with tls_verify=False in code for a lab setup"))
        problems.append((opt, _problem_text(opt, raw["tls_verify"][1], False, err)))
    if missing and not problems:
        names = ", ".join(f"{o.name} ({o.env})" for o in missing)
        message = (f"missing required z4j configuration: {names}. Fix: set each environment variable, "
                   "or pass the option as a keyword argument.")
        lines = tuple(_missing_text(o) for o in missing)
        raise ConfigError(message, option=missing[0].name, env=missing[0].env, problems=lines)
    problems.extend((o, _missing_text(o)) for o in missing)
    _raise(problems)
    return values


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class Config:
    """The agent's resolved settings. Build it with `Config.resolve`.

    Each field is an option: its type, default, bounds and meaning are written here once, and
    `OPTIONS` (the table behind `help(install_agent)`, `--help` and docs/configuration.md) is read
    from these fields."""

    # --- identity and credentials
    brain_url: str = _option("str", REQUIRED, "Base URL of the brain (https://...; a path prefix is kept). "
        "Plain http/ws only for a loopback host or with dev_mode=True.")
    token: Secret = _option("secret", REQUIRED, "Agent bearer token the brain returned when the agent was created "
                            "(urlsafe base64; whitespace or control characters inside are refused).")
    hmac_secret: Secret = _option("secret", REQUIRED, "Frame-signing secret the brain returned with the token "
        "(urlsafe base64, decodes to >= 32 bytes).")
    project_id: str = _option("str", REQUIRED,
        "Project slug (used for logging and file names).", minimum=1, maximum=63)
    agent_name: str | None = _option("str", None,
        "Display name of this agent; unset means the host name.", maximum=64)
    agent_id: str = _option("str", "",
        "Agent UUID; optional: the brain names it on connect (long-poll falls back to it "
        "if the brain's answer lacks it).")
    environment: str = _option("str", "production", "Deployment environment label.")
    tags: Mapping[str, str] = _option("tags", Tags(), "Free-form labels: `k=v,k2=v2` or a JSON object.")
    transport: str = _option("choice", "auto",
        "Wire transport: `ws` (WebSocket), `longpoll` (HTTPS long-poll, for paths "
        "that do not pass WebSocket upgrades), or `auto`: WebSocket, falling back to long-poll while something "
        "on the path refuses the upgrade.", choices=("auto", "ws", "longpoll"))
    worker_role: str | None = _option("choice", None,
        "Role of this process, for display.", choices=("web", "task", "scheduler", "beat", "other"))
    # --- behaviour switches
    dev_mode: bool = _option("bool", False, "Lab mode: allows plain http/ws to any host and tls_verify=False. "
        "Keyword only: Z4J_DEV_MODE is ignored with a warning.", env_allowed=False)
    strict_mode: bool = _option("bool", False, "Raise on agent misuse instead of logging it.")
    autostart: bool = _option("bool", True, "Start the agent (and register the shutdown hook) on install.")
    disabled: bool = _option("bool", False, "Opt out: install becomes a no-op (Celery/RQ auto-bootstrap too).")
    # --- local storage
    buffer_path: Path | None = _option("path", None, "SQLite buffer file; unset means a file chosen under `home`.")
    home: Path | None = _option("path", None, "Agent state directory; unset means `~/.z4j`.")
    buffer_max_events: int = _option("int", 100_000, "Most events kept in the buffer; the oldest are evicted "
        "(and counted) beyond it.", minimum=1000)
    buffer_max_bytes: int = _option("int", 268_435_456, "Largest buffer size in bytes (256 MiB).", minimum=_MIB)
    buffer_spool: bool = _option("bool", True,
        "Appends go to a per-process spool file (one write() per event) that the "
        "agent moves into the SQLite buffer; false commits each event to SQLite directly (slower; for "
        "filesystems where flock does not work).")
    # --- payload and redaction
    max_payload_bytes: int = _option("int", 8192, "Largest captured argument/result value, in bytes, before "
        "truncation.", minimum=128)
    max_event_bytes: int = _option("int", 65536, "Largest single event, in bytes, after redaction.", minimum=1024)
    redaction_extra_key_patterns: tuple[str, ...] = _option("list", (),
        "Extra regexes; a matching dict key has its value redacted.")
    redaction_extra_value_patterns: tuple[str, ...] = _option("list", (),
        "Extra regexes; a string value they match is redacted.")
    # --- connection
    heartbeat_seconds: float = _option("float", 10.0,
        "Heartbeat interval until the brain's hello_ack sets one.", minimum=1, maximum=300)
    connect_timeout: float = _option("float", 10.0,
        "Seconds allowed for TCP/TLS/WebSocket connect.", minimum=0.1, maximum=600)
    handshake_timeout: float = _option("float", 10.0,
        "Seconds to wait for hello_ack after hello.", minimum=0.1, maximum=600)
    stop_timeout: float = _option("float", 5.0,
        "Seconds stop() may spend draining and closing.", minimum=0, maximum=600)
    resend_after_seconds: float = _option("float", 90.0,
        "Resend an unacknowledged batch after this long.", minimum=1)
    silence_timeout_seconds: float = _option("float", 30.0,
        "End the session and reconnect when the brain has answered "
        "nothing (no pong, ack or frame) for this long while the agent waits on it: a frozen brain, a dropped "
        "NAT flow. Grows to 3x the longest answer the session has shown (a busy brain), up to 75 s.",
        minimum=1, maximum=75)
    max_inflight_frames: int = _option("int", 4,
        "Event batches sent but not yet acknowledged.", minimum=1, maximum=256)
    max_batch_events: int = _option("int", 5000, "Most events in one event_batch frame.", minimum=1, maximum=5000)
    ca_bundle: Path | None = _option("path", None, "PEM file of extra trusted CAs for a private brain; must exist.")
    tls_verify: bool = _option("bool", True, "Verify the brain's TLS certificate. Turning it off requires "
        "dev_mode=True. Keyword only.", env_allowed=False)
    backoff_max_connection: float = _option("float", 30.0,
        "Reconnect backoff cap after network errors (s).", minimum=1)
    backoff_max_protocol: float = _option("float", 60.0,
        "Reconnect backoff cap after protocol errors (s).", minimum=1)
    backoff_max_auth: float = _option("float", 600.0, "Reconnect backoff cap after auth refusals (s).", minimum=1)
    backoff_max_incompatible: float = _option("float", 3600.0,
        "Reconnect backoff cap after a version mismatch (s).", minimum=1)
    # --- commands
    command_workers: int = _option("int", 2, "Threads running operator commands.", minimum=1, maximum=32)
    command_timeout_seconds: float = _option("float", 60.0, "Longest a single command may run.", minimum=0.1)
    command_dedupe_ttl_seconds: float = _option("float", 3600.0, "How long a command id is remembered to drop "
        "redelivered duplicates.", minimum=1)
    purge_threshold: int = _option("int", 1000,
        "Queue depth above which purge_queue needs a confirm token.", minimum=0)
    orchestrated: bool | None = _option("bool", None,
        "Running under an orchestrator (systemd, k8s...); unset means auto-detect.")
    _sources: Mapping[str, str] | None = field(init=False, compare=False, default=None)

    def __post_init__(self) -> None:
        # Direct construction (and dataclasses.replace) gets the same validation as resolve().
        given = {o.name: (getattr(self, o.name), "kwarg") for o in OPTIONS}
        for name, value in _validate(given).items():
            object.__setattr__(self, name, value)
        if not self._sources:
            sources = {o.name: ("default" if not o.required and getattr(self, o.name) == o.default else "kwarg")
                       for o in OPTIONS}
            object.__setattr__(self, "_sources", MappingProxyType(sources))

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Config:
        """Merge keyword arguments > ``Z4J_*`` env vars > defaults, validate, and freeze.

        ``env`` defaults to ``os.environ``. Raises ``TypeError`` for an unknown keyword and
        ``ConfigError`` for anything missing or invalid (all problems in one error).
        """
        unknown = [k for k in kwargs if k not in OPTIONS_BY_NAME]
        if unknown:
            import difflib  # only for this error: a forking worker parent never carries it

            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, OPTIONS_BY_NAME, n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(f"Config.resolve() got unknown option(s): {', '.join(hints)}")
        environ = os.environ if env is None else env
        raw: dict[str, tuple[Any, str]] = {}
        for opt in OPTIONS:
            raw[opt.name] = _pick(opt, kwargs.get(opt.name), environ)
        return cls._from_valid(_validate(raw), {n: origin for n, (_, origin) in raw.items()})

    @classmethod
    def _from_valid(cls, values: Mapping[str, Any], sources: Mapping[str, str]) -> Config:
        # Values _validate() returned: set as they are, without __post_init__ validating again.
        config = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(config, name, value)
        object.__setattr__(config, "_sources", MappingProxyType(dict(sources)))
        return config

    def source_of(self, name: str) -> str:
        """Where option ``name`` came from: ``"kwarg"``, ``"env"`` or ``"default"``."""
        if name not in OPTIONS_BY_NAME:
            raise KeyError(f"unknown z4j option {name!r}")
        return self._sources[name]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-friendly rows ``{"name", "env", "value", "source"}``, secrets masked."""
        return [
            {"name": o.name, "env": o.env if o.env_allowed else None,
             "value": _display(o, getattr(self, o.name)), "source": self._sources[o.name]}
            for o in OPTIONS
        ]

    @property
    def key(self) -> bytes:
        """The raw HMAC key decoded from ``hmac_secret`` (never log it)."""
        return require_key_length(decode_hmac_secret(self.hmac_secret.reveal()))

    @property
    def ws_url(self) -> str:
        """WebSocket endpoint: https->wss, http->ws, path prefix kept, ``/ws/agent`` appended.

        Any ``user:password@`` is dropped: the agent authenticates with its bearer token, and
        this URL ends up in reprs and log lines."""
        parts = urlsplit(self.brain_url)
        scheme = {"https": "wss", "http": "ws"}.get(parts.scheme.lower(), parts.scheme.lower())
        path = parts.path.rstrip("/")
        if not path.endswith("/ws/agent"):
            path += "/ws/agent"
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((scheme, netloc, path, "", ""))

    @property
    def is_loopback(self) -> bool:
        """True when the brain host is localhost, 127.0.0.0/8 or ::1."""
        return _host_is_loopback(urlsplit(self.brain_url).hostname)

    @property
    def home_dir(self) -> Path:
        """``home`` or, when unset, ``~/.z4j``."""
        return self.home if self.home is not None else Path("~/.z4j").expanduser()

    def __repr__(self) -> str:
        inner = ", ".join(f"{o.name}={_display_repr(o, getattr(self, o.name))}" for o in OPTIONS)
        return f"Config({inner})"

    __str__ = __repr__

    def __copy__(self) -> Config:
        return self

    def __deepcopy__(self, memo: dict) -> Config:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("Config holds secrets and cannot be pickled; pass it to forked children, "
                        "or resolve it again in the other process")


def _row(f: Field[Any]) -> Option:
    required = f.default is MISSING
    return Option(name=f.name, env="Z4J_" + f.name.upper(), default=None if required else f.default,
                  required=required, **f.metadata[_OPTION_KEY])


OPTIONS: tuple[Option, ...] = tuple(_row(f) for f in fields(Config) if f.init)
OPTIONS_BY_NAME: Mapping[str, Option] = MappingProxyType({o.name: o for o in OPTIONS})


def _pick(opt: Option, kwarg: Any, environ: Mapping[str, str]) -> tuple[Any, str]:
    if kwarg is not None:
        if isinstance(kwarg, str) and kwarg == "":
            return opt.default, "kwarg"
        return kwarg, "kwarg"
    env_value = environ.get(opt.env, "")
    if env_value.strip() != "":
        if opt.env_allowed:
            return env_value, "env"
        _log.warning(f"config.{opt.name}_env_ignored", env_var=opt.env, option=opt.name,
                     reason=f"{opt.name} is keyword only; pass {opt.name}= in code")
    return opt.default, "default"


def _display(opt: Option, value: Any) -> Any:
    if value is None:
        return None
    if opt.kind == "secret":
        return MASK
    if opt.name == "brain_url":
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _display_repr(opt: Option, value: Any) -> str:
    if opt.kind == "secret" and value is not None:
        return repr(value)
    return repr(_display(opt, value))


def options_help_text(indent: str = "    ") -> str:
    """Plain-text option list for docstrings (``install_agent``) and ``--help`` output."""
    lines = []
    for opt in OPTIONS:
        lines.append(f"{indent}{opt.name} ({opt.env_text()}; {opt.type_text()}; default {opt.default_text()})")
        lines.append(f"{indent}    {opt.doc}")
    return "\n".join(lines)
