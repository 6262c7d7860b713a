"""Redaction and payload limits: nothing sensitive leaves the host, nothing too big hits the wire.

Every engine adapter passes an event's ``data`` dict through :meth:`Redactor.scrub_data` before
the event is buffered. The walk is bounded (depth cap, work cap, per-value and per-event byte
caps, cut by ``redaction_limits``), cycle safe, returns a JSON-safe copy and never raises: a
redactor that crashes the worker is worse than one that over-redacts.

Two ways to hide a secret:

* **Keys** (case-insensitive full match): the value under ``password``, ``api_key``,
  ``card_number``... is replaced wholesale, whatever its type (a nested dict included).
* **Values** (search): a string that contains a JWT, a cloud/API key, a PEM private key, a URL
  with a password, an e-mail address, an SSN, a Luhn-valid card number or a ``password=...``
  assignment is replaced wholesale by :data:`REDACTED`. Free text (tracebacks, exception
  messages, RQ descriptions, log lines) is scrubbed span by span instead, so an operator still
  sees the shape of the traceback.

User patterns (``redaction_extra_key_patterns`` / ``redaction_extra_value_patterns``) are checked
when the ``Redactor`` is built (by ``redaction_safety``, loaded only then): a pattern that does
not compile, matches the empty string, or can backtrack catastrophically raises
:class:`RedactionPatternError` at install time instead of stalling a worker later.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .logs import get_logger
from .redaction_errors import RedactionPatternError
from .redaction_limits import SURROGATES, TRUNCATION_MARKER_PREFIX, fit_event, truncate_utf8, utf8_len
from .safety import safe_str

if TYPE_CHECKING:
    from .redaction_safety import CheckedPattern

__all__ = [
    "REDACTED",
    "TRUNCATION_MARKER_PREFIX",
    "RedactionPatternError",
    "Redactor",
    "default_redactor",
    "log_scrubber",
]

REDACTED = "[REDACTED]"
_CYCLE = "[REDACTED:cycle]"

_log = get_logger(__name__)


# ---------------------------------------------------------------------------------------------
# Built-in patterns

# Key patterns: full match, case-insensitive. A qualifier prefix such as ``db_`` or ``client.``
# is allowed for the unambiguous words; short words (pin, pan, otp, ssn) need an exact key or a
# separator so that ``spinner`` or ``japan`` stay untouched.
_P = r"(?:[\w.-]*[_.-])?"  # optional "anything_" qualifier
_KEY_PATTERNS: tuple[str, ...] = (
    # passwords and passphrases (password, password_confirmation, db_password, dbPassword...)
    r"[\w.-]*pass(?:word|wd|phrase|code)s?(?:[_.-]?(?:confirm(?:ation)?|hash(?:ed)?|digest|again|\d))?",
    _P + r"pwd",
    # secrets: secret, secrets, client_secret, webhook_secret, aws_secret_access_key...
    r"[\w.-]*secrets?(?:[_.-]?(?:key|value|token|access[_.-]?key))?",
    # tokens: token, access_token, refreshToken, csrf_token, x-auth-token...
    r"[\w.-]*token",
    r"(?:access|refresh|api|auth|bearer|session|id)[_.-]?tokens",
    # keys that are credentials (cache_key, primary_key, public_key are left alone)
    _P + r"(?:api|access|secret|private|signing|encryption|master|account|client|app|hmac|ssh"
    r"|service|license|auth|session|shared|storage)[_.-]?keys?(?:[_.-]?(?:id|pem|der|data|b64|base64))?",
    r"[\w.-]*apikeys?",
    # authorization headers and credentials
    r"(?:proxy[_.-]?)?authorization",
    r"auth(?:[_.-]?(?:header|code|info|string|data))?",
    _P + r"(?:basic|http)[_.-]?auth",
    _P + r"credentials?",
    r"creds",
    _P + r"(?:set[_.-]?)?cookies?",
    r"sessionid",
    _P + r"jwt",
    r"bearer",
    # one-time codes and PINs
    _P + r"(?:otp|totp|hotp)(?:[_.-]?(?:code|secret))?",
    _P + r"(?:mfa|2fa|verification)[_.-]?(?:code|token|secret)",
    _P + r"pin(?:[_.-]?(?:code|number|no))?",
    # connection strings that embed credentials
    _P + r"dsn",
    _P + r"conn(?:ection)?[_.-]?str(?:ing)?",
    r"database[_.-]?url",
    # personal and payment data
    r"ssn",
    _P + r"social[_.-]?security(?:[_.-]?(?:number|no|num))?",
    _P + r"(?:national[_.-]?id|tax[_.-]?id|passport)(?:[_.-]?(?:number|no|num))?",
    _P + r"(?:iban|bank[_.-]?account(?:[_.-]?(?:number|no|num))?|account[_.-]?number)",
    _P + r"(?:credit|debit)[_.-]?card(?:[_.-]?(?:number|no|num))?",
    _P + r"card[_.-]?(?:number|no|num|pan|cvv2?|cvc2?|pin|code|security[_.-]?code|verification[_.-]?value)",
    r"cc[_.-]?(?:number|num|no|cvv|cvc)",
    r"ccnum",
    r"pan",
    r"cvv2?|cvc2?",
    _P + r"security[_.-]?code",
)

# Value patterns. Python's re scans fast only for a literal prefix (a character-class or
# alternation prefix costs ~10 ns per character), so instead of one big alternation every
# pattern below is led by a literal and gated by a cheap check (memchr for one character,
# length for the rest). They run on ``fold``: the text with ASCII letters lowercased, same
# length, so positions map back 1:1 and matching is case-insensitive.
_B = r"(?<![0-9a-z_-]{lit})"  # token boundary before a literal, checked after the literal


def _bounded(lit: str) -> str:
    return re.escape(lit) + _B.format(lit=re.escape(lit))


_RX_UNDERSCORE = re.compile(  # Stripe, GitHub, npm, Shopify: all have "_" right after the prefix
    "_(?:"
    r"(?<=[spr]k_)(?<![0-9a-z_-][spr]k_)(?:live|test)_[0-9a-z]{16,}"
    r"|(?<=whsec_)[0-9a-z]{24,}"
    r"|(?<=gh[opsur]_)(?<![0-9a-z_-]gh[opsur]_)[0-9a-z]{36,}"
    r"|(?<=github_)pat_\w{50,}"
    r"|(?<=npm_)(?<![0-9a-z_-]npm_)[0-9a-z]{36}"
    r"|(?<=shpat_|shpca_|shppa_|shpss_)[0-9a-f]{32}"
    ")"
)
_RX_DASH = re.compile(  # Slack, GitLab, Google OAuth, PyPI, Square, OpenAI/Anthropic, PEM, SSN
    "-(?:"
    r"(?<=xox[abeoprs]-)[0-9a-z-]{10,}"
    r"|(?<=glpat-)[\w-]{20,}"
    r"|(?<=gocspx-)[\w-]{24,}"
    r"|(?<=pypi-)[\w-]{50,}"
    r"|(?<=sq0atp-|sq0csp-)[\w-]{22,}"
    r"|(?<=sk-)(?<![0-9a-z_-]sk-)(?:proj-|ant-)?[\w-]{20,}"
    r"|----begin[a-z0-9 ]{0,40}private key[a-z ]{0,10}-----"
    r"(?:(?s:.*?)-----end[a-z0-9 ]{0,40}private key[a-z ]{0,10}-----|(?s:.*))"
    r"|(?<=[0-9]{3}-)(?<![0-9-][0-9]{3}-)[0-9]{2}-[0-9]{4}(?![0-9-])"
    ")"
)
_RX_DOT = re.compile(  # Google OAuth access token, SendGrid, Slack webhooks
    r"\.(?:"
    r"(?<=ya29\.)(?<![0-9a-z_-]ya29\.)[\w-]{20,}"
    r"|(?<=sg\.)(?<![0-9a-z_-]sg\.)[\w-]{22}\.[\w-]{43}"
    r"|(?<=hooks\.)slack\.com/(?:services|workflows|triggers)/[\w/-]{8,}"
    ")"
)
# (regex, shortest string it can match) for the literal-led patterns without a 1-char gate
_RX_LONG = (
    (re.compile(_bounded("eyj") + r"[\w-]{8,}\.[\w-]{8,}\.[\w-]*"), 21),  # JWT / JWS
    (re.compile(r"bearer\s+[\w.~+/=-]{16,}"), 23),
    (re.compile(r"ia(?<=akia|asia)(?<![0-9a-z_-]akia|[0-9a-z_-]asia)[0-9a-z]{16}(?![\w-])"), 20),  # AWS
    (re.compile(_bounded("aiza") + r"[\w-]{35}"), 39),  # Google API key
    (re.compile(_bounded("sk") + r"[0-9a-f]{32}(?![\w-])"), 34),  # Twilio API key
)
_RX_EMAIL_DOMAIN = re.compile(r"@(?:[\w-]{1,63}\.)+[^\W\d_]{2,24}(?![\w-])")
_RX_URI_CREDS = re.compile(r"://[^\s/?#@:]{0,256}:[^\s/?#]{1,256}@")
# One literal-led scan per possible first digit (2-6) beats one character-class-led scan.
_RX_CARDS = tuple(
    re.compile(d + rf"(?<![0-9+.-]{d})(?:[ -]?[0-9]){{12,18}}(?![0-9.])") for d in "23456"
)

# key=value / key: value / "key": "value" in free text. Searched on the reversed text so the
# scan is led by the separator (a literal) and the key's last word: every built-in sensitive
# key ends with one of these words (tests/test_redaction.py checks the key corpus against it).
_KV_SUFFIXES = (
    "password", "passwords", "passwd", "passphrase", "passcode", "pwd", "confirm", "confirmation",
    "hash", "hashed", "digest", "again", "secret", "secrets", "key", "keys", "value", "token",
    "tokens", "id", "pem", "der", "data", "b64", "base64", "apikey", "apikeys", "authorization",
    "auth", "header", "code", "info", "string", "credential", "credentials", "creds", "cookie",
    "cookies", "sessionid", "jwt", "bearer", "otp", "totp", "hotp", "pin", "number", "no", "num",
    "dsn", "str", "url", "ssn", "security", "iban", "pan", "cvv", "cvv2", "cvc", "cvc2", "ccnum",
    "card", "passport", "password1", "password2", "password3",
)


def _trie_regex(words: Iterable[str]) -> str:
    """An alternation factored by leading character: re tries branches one by one, so a trie
    keeps each attempt at a separator to a few comparisons instead of one per word."""
    groups: dict[str, list[str]] = {}
    ends = False
    for w in words:
        if w:
            groups.setdefault(w[0], []).append(w[1:])
        else:
            ends = True
    alts = [re.escape(c) + _trie_regex(rest) for c, rest in sorted(groups.items())]
    if not alts:
        return ""
    body = alts[0] if len(alts) == 1 and not ends else "(?:" + "|".join(alts) + ")"
    return body + "?" if ends else body


def _kv_regexes(suffix: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    key = rf"[ \t]*[\"']?(?P<k>(?:{suffix})[\w.-]{{0,63}})(?![\w.-])"
    return re.compile("=" + key), re.compile(":(?<!//:)" + key)


_KV_BUILTIN = _kv_regexes(_trie_regex(sorted({w[::-1] for w in _KV_SUFFIXES})))
_KV_ANY = _kv_regexes(r"[\w.-]")  # with extra key patterns any key can be sensitive

# Shortest string without "@ - : = _ ." that a built-in value pattern can match: a 13-digit card
# number (tests check every pattern family against this).
_MIN_PLAIN_SECRET = 13
_GATE_CHARS = ("@", "-", ":", "=")

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_EMAIL_LOCAL = _TOKEN_CHARS | frozenset(".+")
_ASCII_LOWER = str.maketrans({c: c + 32 for c in range(65, 91)})
_DIGITS = "0123456789"

# Top-level event fields that hold free text: scrubbed span by span, not replaced wholesale.
_TEXT_FIELDS = frozenset(
    {"traceback", "exception", "exception_message", "description", "reason", "error",
     "error_excerpt", "message"}
)
# Identity fields the brain keys on (task registry, queue registry, worker registry). They are
# produced by code and the host, not by users; value patterns would turn "celery@host.example.com"
# into an e-mail address. They are still made JSON-safe and size-capped.
_IDENTITY_FIELDS = frozenset(
    {"task_name", "queue", "worker", "worker_name", "task_id", "parent_task_id", "root_task_id",
     "engine", "kind", "priority"}
)

_AUTH_SCHEMES = re.compile(r"(?:bearer|basic|token|digest|negotiate|ntlm|apikey)\s+", re.IGNORECASE)
_VALUE_STOP = frozenset(" \t\r\n,;&)}]>\"'")
_TOKEN_STOP = frozenset(" \t\r\n\"'`,;()[]{}<>=:|")

_MAX_KEY_LEN = 256  # longer keys are treated as sensitive (protocol.md 5.2)
_MAX_EXTRA_KEY_LEN = 64  # extra key patterns only run on short keys; longer ones are sensitive
_KEY_CACHE_MAX = 4096
_INT64 = 1 << 63
_SCAN_PAST_CUT = 2048  # a JWT or PEM header straddling the truncation point is still seen


# ---------------------------------------------------------------------------------------------
# Card numbers


def _luhn_ok(digits: str) -> bool:
    total = 0
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card_number(text: str) -> bool:
    """Issuer prefix + length + Luhn: a random 16-digit id passes about 4% of the time."""
    digits = text.replace(" ", "").replace("-", "")
    n = len(digits)
    if n < 13 or n > 19:
        return False
    first = digits[0]
    if first == "4":  # Visa
        ok = n in (13, 16, 19)
    elif first == "5":  # Mastercard 51-55, Maestro 50/56-58
        ok = n >= 16 or digits[1] in "0678"
    elif first == "2":  # Mastercard 2221-2720
        ok = n == 16 and 2221 <= int(digits[:4]) <= 2720
    elif first == "3":  # Amex 34/37, Diners 30/36/38/39, JCB 35
        ok = (digits[1] in "47" and n == 15) or (digits[1] in "05689" and n >= 14)
    elif first == "6":  # Discover, UnionPay, Maestro
        ok = n >= 16 or digits[1] in "37"
    else:
        return False
    return ok and _luhn_ok(digits)


# ---------------------------------------------------------------------------------------------
# User patterns


def _combine(compiled: list[re.Pattern[str]]) -> list[re.Pattern[str]]:
    """One alternation when numbering cannot shift (no groups), else the list as given."""
    if len(compiled) > 1 and all(p.groups == 0 for p in compiled):
        try:
            return [re.compile("|".join(f"(?:{p.pattern})" for p in compiled), re.IGNORECASE)]
        except re.error:
            pass
    return compiled


def _as_pattern_list(patterns: Sequence[str] | str | None) -> list[Any]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


# ---------------------------------------------------------------------------------------------
# Safe conversions


def _float_value(v: float) -> float | str:
    if math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


# ---------------------------------------------------------------------------------------------
# The redactor


class _Walk:
    """The state of one walk (one ``scrub``/``scrub_data`` call): ``est``, an upper bound of the
    output's JSON size so far (it drives the work cap and lets a small event skip serialisation),
    and ``path``, the ids of the containers on the current path (cycle detection).

    Slots make each update cheaper than the bare list this replaces; there is no ``__init__``
    because a Python-level call would cost more than the list did: its two creators fill it.
    """

    __slots__ = ("est", "path")
    est: int
    path: set[int]


class Redactor:
    """Scrubs task payloads, event data and log lines; see the module docstring.

    Thread safe: the only shared mutable state is a bounded key-decision cache (plain dict
    operations, atomic under the GIL).
    """

    def __init__(
        self,
        *,
        extra_key_patterns: Sequence[str] = (),
        extra_value_patterns: Sequence[str] = (),
        max_value_bytes: int = 8192,
        max_event_bytes: int = 65536,
        max_depth: int = 32,
        detect_card_numbers: bool = True,
    ) -> None:
        self.max_value_bytes = _check_int("max_value_bytes", max_value_bytes, 128,
                                          "set max_payload_bytes / Z4J_MAX_PAYLOAD_BYTES to 128 or more")
        self.max_event_bytes = _check_int("max_event_bytes", max_event_bytes, 1024,
                                          "set max_event_bytes / Z4J_MAX_EVENT_BYTES to 1024 or more")
        self.max_depth = _check_int("max_depth", max_depth, 1, "use a depth of 1 or more")
        self.detect_card_numbers = bool(detect_card_numbers)

        key_list = _as_pattern_list(extra_key_patterns)
        value_list = _as_pattern_list(extra_value_patterns)
        self.extra_key_patterns = tuple(key_list)
        self.extra_value_patterns = tuple(value_list)
        key_regexes: list[re.Pattern[str]] = []
        extra_values: list[CheckedPattern] = []
        if key_list or value_list:
            # The checker is ~900 lines (a regex reader and timing probes, ~0.35 MiB): a process
            # loads it only when the user configured patterns.
            from .redaction_safety import check_pattern

            key_regexes = [check_pattern("redaction_extra_key_patterns", i, p, key=True).regex
                           for i, p in enumerate(key_list)]
            scan_chars = self.max_value_bytes + _SCAN_PAST_CUT
            extra_values = [check_pattern("redaction_extra_value_patterns", i, p, key=False, scan_chars=scan_chars)
                            for i, p in enumerate(value_list)]
        self._extra_keys = _combine(key_regexes)
        self._extra_value_min = min((p.shortest for p in extra_values), default=1 << 30)
        self._extra_values = _combine([p.regex for p in extra_values])

        self._key_re = re.compile("|".join(f"(?:{p})" for p in _KEY_PATTERNS), re.IGNORECASE)
        self._kv = _KV_ANY if self._extra_keys else _KV_BUILTIN
        self._key_cache: dict[str, tuple[str, bool]] = {}
        self._ascii_fits = self.max_value_bytes // 4  # any str this short fits in max_value_bytes
        self._work_cap = 8 * self.max_event_bytes

    def __repr__(self) -> str:
        return (f"Redactor(extra_key_patterns={len(self.extra_key_patterns)}, "
                f"extra_value_patterns={len(self.extra_value_patterns)}, "
                f"max_value_bytes={self.max_value_bytes}, max_event_bytes={self.max_event_bytes}, "
                f"max_depth={self.max_depth})")

    # -- public API ---------------------------------------------------------------------------

    def scrub(self, value: Any) -> Any:
        """A JSON-safe, redacted, size-capped copy of ``value``. Never raises."""
        try:
            st = _Walk()
            st.est, st.path = 0, set()
            return self._node(value, 0, st)
        except Exception:  # noqa: BLE001 - the contract is "never raises"
            return REDACTED

    def scrub_text(self, text: str) -> str:
        """Free text (exception messages, tracebacks): secrets replaced span by span, then capped."""
        try:
            if type(text) is not str:
                text = safe_str(text)
            return self._text(text)
        except Exception:  # noqa: BLE001
            return REDACTED

    def scrub_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Scrub an event's ``data`` dict and make its canonical JSON fit ``max_event_bytes``."""
        try:
            return self._scrub_data(data)
        except Exception:  # noqa: BLE001
            return {"redaction_error": REDACTED}

    def is_sensitive_key(self, key: Any) -> bool:
        try:
            return self._key(key)[1]
        except Exception:  # noqa: BLE001
            return True

    def contains_secret(self, text: str) -> bool:
        """True when a value pattern matches anywhere in ``text`` (whole-value semantics)."""
        try:
            return self._hit(text)
        except Exception:  # noqa: BLE001
            return True

    # -- walking ------------------------------------------------------------------------------

    def _node(self, v: Any, depth: int, st: _Walk) -> Any:
        t = type(v)
        if t is str:
            st.est += 6 * len(v) + 3
            return self._str(v)
        if t is int:
            bits = v.bit_length()
            if bits > 1024:  # json refuses ints over 4300 digits; nobody needs them
                st.est += 32
                return f"<int of {bits} bits>"
            st.est += 24 if bits <= 64 else bits // 3 + 3
            return v
        if t is dict:
            return self._dict(v, depth, st)
        if t is list or t is tuple:
            return self._list(v, depth, st)
        if v is None or t is bool:
            st.est += 6
            return v
        if t is float:
            st.est += 26
            return _float_value(v)
        try:
            if isinstance(v, dict):
                return self._dict(v, depth, st)
            if isinstance(v, (list, tuple, set, frozenset)):
                return self._list(v, depth, st)
            return self._other(v, st)
        except Exception:  # noqa: BLE001 - a hostile object must not escape the walk
            return REDACTED

    def _dict(self, v: dict[Any, Any], depth: int, st: _Walk) -> Any:
        ident = id(v)
        path = st.path
        if depth >= self.max_depth or ident in path:
            st.est += 20
            return REDACTED if ident not in path else _CYCLE
        path.add(ident)
        try:
            out: dict[str, Any] = {}
            cache = self._key_cache
            node = self._node
            est = 2
            items = list(dict.items(v))  # RuntimeError if another thread resizes it: caught
            for k, val in items:
                if st.est + est > self._work_cap:
                    out[TRUNCATION_MARKER_PREFIX + "keys]"] = f"{len(items) - len(out)} more keys"
                    break
                decision = cache.get(k) if type(k) is str else None
                out_key, sensitive = decision if decision is not None else self._key(k)
                if out_key in out:
                    out_key = _unique_key(out, out_key)
                est += 6 * len(out_key) + 4
                if sensitive:
                    est += 13
                    out[out_key] = REDACTED
                elif type(val) is int and -_INT64 <= val < _INT64:  # inline: the common scalars
                    est += 21
                    out[out_key] = val
                else:
                    out[out_key] = node(val, depth + 1, st)
            st.est += est
            return out
        except Exception:  # noqa: BLE001
            return REDACTED
        finally:
            path.discard(ident)

    def _list(self, v: Any, depth: int, st: _Walk) -> Any:
        ident = id(v)
        path = st.path
        if depth >= self.max_depth or ident in path:
            st.est += 20
            return REDACTED if ident not in path else _CYCLE
        path.add(ident)
        try:
            t = type(v)
            if t is list or t is tuple:
                items = list(v)
            elif isinstance(v, (set, frozenset)):
                try:
                    items = sorted(v)  # deterministic output for the same input
                except Exception:  # noqa: BLE001 - unorderable members: keep iteration order
                    items = list(v)
            else:
                items = list(v)
            node = self._node
            out: list[Any] = []
            st.est += 2 + len(items)
            cap = self._work_cap
            for item in items:
                if st.est > cap:
                    out.append(f"{TRUNCATION_MARKER_PREFIX}{len(items) - len(out)} items]")
                    break
                if type(item) is int and -_INT64 <= item < _INT64:
                    out.append(item)
                else:
                    out.append(node(item, depth + 1, st))
            return out
        except Exception:  # noqa: BLE001
            return REDACTED
        finally:
            path.discard(ident)

    def _other(self, v: Any, st: _Walk) -> Any:
        if isinstance(v, (bytes, bytearray, memoryview)):
            raw = bytes(v[: self.max_value_bytes]) if not isinstance(v, memoryview) else v[: self.max_value_bytes].tobytes()
            text = repr(raw)
            if len(v) > self.max_value_bytes:
                text += f"{TRUNCATION_MARKER_PREFIX}{len(v) - self.max_value_bytes} bytes]"
            st.est += 6 * len(text) + 3
            return self._str(text)
        if isinstance(v, str):  # str subclass
            return self._node(str.__str__(v), 0, st)
        if isinstance(v, bool):
            return bool(v)
        if isinstance(v, int):  # IntEnum & co: the plain number is what JSON would show
            return self._node(int(v), 0, st)
        if isinstance(v, float):
            return self._node(float(v), 0, st)
        text = safe_str(v)
        st.est += 6 * len(text) + 3
        return self._str(text)

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, k: Any) -> tuple[str, bool]:
        if type(k) is not str:
            k = _key_text(k)
        hit = self._key_cache.get(k)
        if hit is not None:
            return hit
        decision = self._decide_key(k)
        if len(k) <= _MAX_KEY_LEN:
            if len(self._key_cache) >= _KEY_CACHE_MAX:
                self._key_cache.clear()
            self._key_cache[k] = decision
        return decision

    def _decide_key(self, k: str) -> tuple[str, bool]:
        sensitive = (
            len(k) > _MAX_KEY_LEN
            or self._key_re.fullmatch(k) is not None
            or (bool(self._extra_keys)
                and (len(k) > _MAX_EXTRA_KEY_LEN or any(p.fullmatch(k) for p in self._extra_keys)))
        )
        return self._str(k), sensitive

    # -- strings ------------------------------------------------------------------------------

    def _clean(self, s: str) -> tuple[str, str]:
        """(capped string, text to scan). The scan text runs a little past the cut so a secret
        straddling the truncation point is still recognised."""
        if not s.isascii():
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                s = SURROGATES.sub("\ufffd", s)
        if len(s) <= self._ascii_fits:
            return s, s
        total = utf8_len(s)
        if total <= self.max_value_bytes:
            return s, s
        cut = truncate_utf8(s, self.max_value_bytes, total)
        return cut, s[: len(cut) + _SCAN_PAST_CUT]

    def _str(self, s: str) -> str:
        n = len(s)
        # Fast path: most strings in task payloads are short words that cannot hold a secret.
        if n < _MIN_PLAIN_SECRET and n < self._extra_value_min and "@" not in s and "-" not in s \
                and ":" not in s and "=" not in s:
            return s if s.isascii() else self._clean(s)[0]
        out, scan = self._clean(s)
        return REDACTED if self._hit(scan) else out

    def _hit(self, s: str) -> bool:
        if self._spans(s, True):
            return True
        if self._extra_values and len(s) >= self._extra_value_min:
            return any(p.search(s) is not None for p in self._extra_values)
        return False

    def _spans(self, s: str, first: bool) -> list[tuple[int, int]]:
        """Secret spans in ``s`` (just the first one found when ``first``)."""
        n = len(s)
        fold = s.lower() if s.isascii() else s.translate(_ASCII_LOWER)
        spans: list[tuple[int, int]] = []
        add = spans.append
        if "_" in s:
            for m in _RX_UNDERSCORE.finditer(fold):
                add(_expand(s, m.start(), m.end()))
                if first:
                    return spans
        if "-" in s:
            for m in _RX_DASH.finditer(fold):
                add(_expand(s, m.start(), m.end()))
                if first:
                    return spans
        if "." in s:
            for m in _RX_DOT.finditer(fold):
                add(_expand(s, m.start(), m.end()))
                if first:
                    return spans
        for rx, shortest in _RX_LONG:
            if n >= shortest:
                for m in rx.finditer(fold):
                    add(_expand(s, m.start(), m.end()))
                    if first:
                        return spans
        if "@" in s:
            for m in _RX_EMAIL_DOMAIN.finditer(fold):
                at = m.start()
                start = at
                while start > 0 and at - start < 64 and (s[start - 1] in _EMAIL_LOCAL or s[start - 1].isalnum()):
                    start -= 1
                if start < at:
                    add((start, m.end()))
                    if first:
                        return spans
            if "://" in s:
                for m in _RX_URI_CREDS.finditer(fold):
                    add((m.start() + 3, m.end() - 1))
                    if first:
                        return spans
        if self.detect_card_numbers and n >= 13:
            for rx in _RX_CARDS:
                for m in rx.finditer(s):
                    if _is_card_number(m.group()):
                        add(m.span())
                        if first:
                            return spans
        if "=" in s or ":" in s:
            self._assignment_spans(s, fold, first, spans)
        return spans

    def _assignment_spans(self, s: str, fold: str, first: bool, spans: list[tuple[int, int]]) -> None:
        """Add the value spans of ``key=value`` / ``key: value`` whose key is sensitive."""
        n = len(s)
        rev = fold[::-1]
        for rx in self._kv:
            for m in rx.finditer(rev):
                ks, ke = m.span("k")
                if not self._key(s[n - ke:n - ks])[1]:
                    continue
                vstart = n - m.start()
                while vstart < n and s[vstart] in " \t":
                    vstart += 1
                vend = _kv_value_end(s, vstart)
                if vend > vstart:
                    if s[vstart] in "\"'" and vend - vstart >= 2 and s[vend - 1] == s[vstart]:
                        spans.append((vstart + 1, vend - 1))  # keep the quotes: output stays readable
                    else:
                        spans.append((vstart, vend))
                    if first:
                        return

    def _text(self, text: str) -> str:
        capped, scan = self._clean(text)
        out = _replace_spans(scan, self._spans(scan, False))
        if self._extra_values:
            out = _sub_extra(out, self._extra_values)
        if capped is not scan:
            # scrubbed past the cut (a secret may straddle it); cap again, counting the original
            out = truncate_utf8(out, self.max_value_bytes, max(utf8_len(text), utf8_len(out)))
        return out

    # -- events -------------------------------------------------------------------------------

    def _scrub_data(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            data = {"value": data}
        st = _Walk()
        st.est, st.path = 0, set()
        out: dict[str, Any] = {}
        cache = self._key_cache
        fits = self._ascii_fits
        est = 2
        for k, v in list(dict.items(data)):
            decision = cache.get(k) if type(k) is str else None
            out_key, sensitive = decision if decision is not None else self._key(k)
            if out_key in out:
                out_key = _unique_key(out, out_key)
            est += 6 * len(out_key) + 4
            if sensitive:
                out[out_key] = REDACTED
            elif type(v) is not str:
                out[out_key] = self._node(v, 1, st)
            elif out_key in _IDENTITY_FIELDS:
                est += 6 * len(v) + 3
                out[out_key] = v if len(v) <= fits and v.isascii() else self._clean(v)[0]
            elif out_key in _TEXT_FIELDS:
                est += 6 * len(v) + 3
                out[out_key] = self._text(v)
            else:
                out[out_key] = self._node(v, 1, st)
        if st.est + est <= self.max_event_bytes:  # an upper bound: no need to serialise
            return out
        return fit_event(out, self.max_event_bytes)



def _check_int(name: str, value: Any, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {fix}")
    return int(value)


def _key_text(k: Any) -> str:
    """Stringify a dict key the way json.dumps would (True -> "true", None -> "null")."""
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return str(int(k)) if k.bit_length() <= 1024 else f"<int of {k.bit_length()} bits>"
    if isinstance(k, float):
        v = _float_value(float(k))
        return v if isinstance(v, str) else repr(v)
    if isinstance(k, str):
        return str.__str__(k)
    return safe_str(k)


def _unique_key(out: dict[str, Any], key: str) -> str:
    n = 2
    while f"{key}#{n}" in out:
        n += 1
    return f"{key}#{n}"


def _sub_extra(s: str, patterns: list[re.Pattern[str]]) -> str:
    """User patterns may match only part of a secret (a prefix, say): widen each hit to the
    whole token around it so no tail of the secret survives."""
    for rx in patterns:
        parts: list[str] = []
        last = pos = 0
        while pos <= len(s):
            m = rx.search(s, pos)
            if m is None:
                break
            start, end = m.start(), m.end()
            while start > last and s[start - 1] not in _TOKEN_STOP:
                start -= 1
            while end < len(s) and s[end] not in _TOKEN_STOP:
                end += 1
            parts.append(s[last:start])
            parts.append(REDACTED)
            last = end
            pos = max(end, m.start() + 1)
        if parts:
            parts.append(s[last:])
            s = "".join(parts)
    return s


def _kv_value_end(s: str, start: int) -> int:
    """End index of the value that starts at ``start`` (quoted, or up to a delimiter); the end
    equals ``start`` when there is no value worth hiding (no letter or digit in it)."""
    n = len(s)
    if start >= n:
        return start
    q = s[start]
    if q in "\"'":
        end = start + 1
        limit = min(n, start + 4096)
        while end < limit:
            c = s[end]
            if c == "\\":
                end += 2
                continue
            if c == q or c == "\n":
                break
            end += 1
        end = min(end + 1, n) if end < n and s[end] == q else min(end, n)
    else:
        m = _AUTH_SCHEMES.match(s, start)
        end = m.end() if m else start
        limit = min(n, end + 4096)
        while end < limit and s[end] not in _VALUE_STOP:
            end += 1
    return end if any(c.isalnum() for c in s[start:end]) else start


def _expand(s: str, start: int, end: int) -> tuple[int, int]:
    """Widen a match to the whole token around it: no prefix or tail of a secret survives."""
    while start > 0 and s[start - 1] in _TOKEN_CHARS:
        start -= 1
    n = len(s)
    while end < n and s[end] in _TOKEN_CHARS:
        end += 1
    return start, end


def _replace_spans(s: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return s
    spans.sort()
    parts: list[str] = []
    last = 0
    cur_start, cur_end = spans[0]
    for start, end in spans[1:]:
        if start <= cur_end:  # overlapping or touching: one marker
            cur_end = max(cur_end, end)
            continue
        parts.append(s[last:cur_start])
        parts.append(REDACTED)
        last = cur_end
        cur_start, cur_end = start, end
    parts.append(s[last:cur_start])
    parts.append(REDACTED)
    parts.append(s[cur_end:])
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Logging

_default: Redactor | None = None

_LOG_PASSTHROUGH = frozenset({"level", "logger", "timestamp", "_record", "_from_structlog", "exc_info",
                              "stack_info", "log_level", "logger_name"})
_LOG_TEXT = frozenset({"event", "exception", "stack"})


def default_redactor() -> Redactor:
    """A shared Redactor with built-in patterns only (for logs before a config exists)."""
    global _default
    if _default is None:
        _default = Redactor()
    return _default


def log_scrubber(redactor: Redactor | None = None) -> Callable[[Any, str, dict[str, Any]], dict[str, Any]]:
    """A structlog processor that scrubs log lines like task payloads.

    Place it after ``format_exc_info`` (or anywhere: an un-rendered ``exc_info`` is rendered and
    scrubbed here so the traceback text cannot carry a secret past this point). The library
    never installs it itself; applications add it to their structlog configuration.
    """

    def processor(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        r = redactor if redactor is not None else default_redactor()
        try:
            exc_info = event_dict.get("exc_info")
            if exc_info and "exception" not in event_dict:
                event_dict = _render_exc_info(logger, method_name, event_dict)
            for key in list(event_dict):
                value = event_dict[key]
                if key in _LOG_PASSTHROUGH:
                    continue
                if key in _LOG_TEXT and isinstance(value, str):
                    event_dict[key] = r.scrub_text(value)
                elif key == "positional_args" and isinstance(value, tuple):
                    event_dict[key] = tuple(r.scrub(list(value)))
                elif r.is_sensitive_key(key):
                    event_dict[key] = REDACTED
                elif type(value) in (int, float, bool) or value is None:
                    continue
                else:
                    event_dict[key] = r.scrub(value)
            return event_dict
        except Exception:  # noqa: BLE001 - a logging processor must never break the caller
            return {"event": "log.redaction_failed", "level": event_dict.get("level", "error")}

    return processor


def _render_exc_info(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    try:
        from structlog.processors import format_exc_info

        return format_exc_info(logger, method_name, event_dict)
    except Exception:  # noqa: BLE001
        event_dict.pop("exc_info", None)
        event_dict["exception"] = REDACTED
        return event_dict
