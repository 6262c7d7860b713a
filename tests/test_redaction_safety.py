"""The pattern safety checker: its regex reader agrees with Python's, its verdicts, its bounds.

The refusals the Redactor reports are in test_redaction.py; here are the pieces underneath.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from re import _parser as sre_parse  # only as the oracle the reader is compared with

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import z4j_bare
from z4j_bare import redaction, redaction_safety
from z4j_bare.redaction_regex import INF, Alt, Chars, Repeat, parse, width
from z4j_bare.redaction_safety import RedactionPatternError, check_pattern

ORACLE_MAX = sre_parse.MAXREPEAT - 1  # re reports an unbounded width as this (or more)


def oracle_width(pattern: str) -> tuple[int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = sre_parse.parse(pattern, re.IGNORECASE).getwidth()
    return lo, min(hi, ORACLE_MAX)


def our_width(pattern: str) -> tuple[int, int]:
    tree = parse(pattern)
    lo, hi = width(tree.items, tree.groups)
    return lo, min(hi, ORACLE_MAX)


BUILT_IN = (
    list(redaction._KEY_PATTERNS)
    + [rx.pattern for rx in (redaction._RX_UNDERSCORE, redaction._RX_DASH, redaction._RX_DOT,
                             redaction._RX_EMAIL_DOMAIN, redaction._RX_URI_CREDS, *redaction._RX_CARDS,
                             *redaction._KV_BUILTIN, *redaction._KV_ANY)]
    + [rx.pattern for rx, _ in redaction._RX_LONG]
)
SYNTAX = [
    r"(?x) a b # comment\n c", r"(?i:ab)+", r"(?-i:a)b", r"(?s:.)+", r"(?a)\w+\d\s", r"(?P<n>ab)(?P=n)",
    r"(a)?(?(1)b|c)", r"\x41\u0042\N{EM DASH}\101\0\012", r"[\d\s-]+", r"[^a-z]{2,}?", r"a{,3}b{2,}c{}d{x}",
    r"(?#comment)a*", r"(?<=ab)c(?!d)", r"\bfoo\B", r"[]a]", r"[a-]", r"[-a]", r"[\]]", r"a++b*+c?+",
    r"x{3}", r"\Aab\Z", r"a|b|c", r"ab|ac", r"(ab|ac)*", r"[ab]|c|\d", r"(?>a|bc)+", r"(a)\1?", r"[\b]",
]


@pytest.mark.parametrize("pattern", BUILT_IN + SYNTAX)
def test_reader_widths_match_pythons_parser(pattern: str) -> None:
    assert our_width(pattern) == oracle_width(pattern)


_ATOMS = ["a", "b", r"\d", r"\w", r"\s", r"\D", ".", "[ab]", "[^a]", "[a-c]", r"\b", "^", "$", r"\x41", r"\\",
          r"\.", "{", "}", "]", "-", r"\1", r"\Z", "é", r"[\w.-]"]
_QUANTIFIERS = ["*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}", "*?", "+?", "??", "*+", "++", "{1,2}?"]
_regex = st.recursive(
    st.sampled_from(_ATOMS),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}|{p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"(?:{p[0]}|{p[1]})"),
        inner.map(lambda p: f"(?>{p})"), inner.map(lambda p: f"(?={p})"), inner.map(lambda p: f"(?i:{p})"),
        st.tuples(inner, inner).map(lambda p: f"(?(1){p[0]}|{p[1]})"),
        st.tuples(inner, st.sampled_from(_QUANTIFIERS)).map(lambda p: f"({p[0]}){p[1]}"),
        st.tuples(inner, st.sampled_from(_QUANTIFIERS)).map(lambda p: f"(?:{p[0]}){p[1]}"),
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_regex)
def test_reader_agrees_with_python_on_generated_patterns(pattern: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern, re.IGNORECASE)
    except re.error:
        return
    assert our_width(pattern) == oracle_width(pattern)


def test_reader_builds_the_tree_re_runs() -> None:
    # like re: a shared prefix leaves the alternation, single characters become one set
    (prefix, rest) = parse("ab|ac").items
    assert isinstance(prefix, Chars) and prefix.chars == {"a", "A"}
    assert isinstance(rest, Chars) and rest.chars == {"b", "B", "c", "C"}
    (rep,) = parse("(?:x|yz)+?").items
    assert isinstance(rep, Repeat) and (rep.lo, rep.hi, rep.mode) == (1, INF, "lazy") and isinstance(rep.body[0], Alt)
    (dot,) = parse(".").items
    assert "\n" not in dot.chars and "\n" in parse("(?s).").items[0].chars  # type: ignore[union-attr]


def test_no_private_parts_of_re() -> None:
    private = re.compile(r"\bre\._\w+|from re import _|\bsre_(?:parse|constants|compile)\b")
    package = Path(z4j_bare.__file__).parent
    assert not [path for path in package.rglob("*.py") if private.search(path.read_text(encoding="utf-8"))]


# -- verdicts ------------------------------------------------------------------------------------

ACCEPTED = {
    # pattern: (as a value, as a key)
    "acme_[a-z0-9]{32}": (True, True),
    "acme_[a-z0-9]+": (True, True),  # the repeat cannot run over "acme_": linear
    "token:[^\\s]+": (True, True),  # nothing after the repeat can fail: the first start wins
    "secret.*": (True, True),
    "[a-z]+x?": (True, True),  # an optional tail is not a failure point
    "[a-z0-9._%+-]{1,64}@example\\.com": (True, True),  # bounded: what the refusal suggests
    "x(?:ab|cd){1,16}": (True, True),
    "tenant_.*_code": (False, True),  # searched, '.*' runs over the next start; fine as a key
    "\\d+\\d+\\d+x": (False, True),  # cubic: refused for 10 KB values, cheap on 64-char keys
    "secret-[a-z0-9-]+-end": (False, True),  # "secret-secret-..." makes every start scan the rest
    "[a-z0-9._%+-]+@example\\.com": (False, True),
    "[a-z0-9]{20,}\\b": (False, True),  # "aaaa…a_": \b fails everywhere in the run
    "eyJ[\\w-]+\\.[\\w-]+": (False, True),  # "eyJeyJ…": every "eyJ" starts a scan of the rest
    "(?<![\\w-])eyJ[\\w-]+\\.[\\w-]+": (True, True),  # no start inside a run of [\w-]
    "(?<=[=:])[a-z]+x": (True, True),
    "^secret.*x": (True, True),
    "\\w+\\w+\\w+\\w+x": (False, False),  # n^4 even on keys
    "x(a+)+y": (False, False),
    "(?:ab|[a-c]b)+x": (False, False),  # "abab…": each "ab" either way, 2^n splits
    "(a|ab)+c": (False, True),  # like re, the reader moves the shared "a" out: no ambiguity left
}


@pytest.mark.parametrize("pattern", sorted(ACCEPTED))
def test_verdicts(pattern: str) -> None:
    as_value, as_key = ACCEPTED[pattern]
    for key, expected in ((False, as_value), (True, as_key)):
        try:
            check_pattern("s", 0, pattern, key=key)
            accepted = True
        except RedactionPatternError as err:
            accepted = False
            assert "catastrophic backtracking" in err.reason and err.fix
        assert accepted is expected, (pattern, "key" if key else "value")


def test_polynomial_refusal_says_how_much_and_how_to_fix() -> None:
    with pytest.raises(RedactionPatternError) as info:
        check_pattern("redaction_extra_value_patterns", 2, "[a-z]+@corp", key=False, scan_chars=4096)
    err = info.value
    assert err.setting == "redaction_extra_value_patterns[2]"
    assert "n^2" in err.reason and "4096 characters" in err.reason and "{1,64}" in err.fix


def test_timing_backstop_uses_a_small_cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # A quadratic pattern the structure check would refuse anyway, run straight through the
    # probes with a tiny budget: the probes refuse it, and stop at the first slow probe.
    monkeypatch.setitem(redaction_safety._BUDGET, "value", (0.001, 0.010))
    start = time.thread_time()
    problem = redaction_safety._timing_problem(re.compile(".*x"), ["a"], "value", 2048)
    assert problem is not None and "took" in problem and "the budget is 1 ms" in problem
    assert time.thread_time() - start < 2
    assert redaction_safety._timing_problem(re.compile("acme_[a-z0-9]{32}"), ["a", "0"], "value", 2048) is None


def test_sound_patterns_are_checked_quickly() -> None:
    start = time.thread_time()
    for pattern in ("acme_[a-z0-9]{32}", "tenant[_-]?secret", "emp[0-9]{6}", "x-(?:[a-z]{1,8}\\.){1,4}corp"):
        check_pattern("s", 0, pattern, key=False)
        check_pattern("s", 0, pattern, key=True)
    assert time.thread_time() - start < 2  # the probe budgets cap it at ~0.3 s per value pattern


def test_unreadable_or_deep_patterns_are_refused_clearly() -> None:
    deep = "(" * 400 + "a" + ")" * 400
    with pytest.raises(RedactionPatternError) as info:
        check_pattern("s", 0, deep, key=True)
    assert "Fix:" in str(info.value)
