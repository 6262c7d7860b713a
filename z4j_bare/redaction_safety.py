"""User redaction patterns are checked once, when the Redactor is built, so none can stall a worker.

A pattern in ``redaction_extra_key_patterns`` runs ``fullmatch`` on every new dict key (keys
longer than 64 characters never reach it); one in ``redaction_extra_value_patterns`` runs
``search`` over string values of up to ``max_payload_bytes`` (plus a little past the cut).
Python's ``re`` backtracks, so a careless pattern can take exponential or polynomial time on
the wrong input. ``check_pattern`` refuses, with a :class:`RedactionPatternError` that names the
setting, quotes the pattern, says why and how to fix it:

1. what does not compile, is blank, too long, or (for values) matches the empty string;
2. exponential shapes, read from the pattern's structure (``redaction_regex``): a variable repeat
   inside another repeat with nothing that separates the two (``(a+)+``, ``(\\w+\\s?)*``), and an
   alternation inside a repeat whose branches can start the same way (``(a|a)*``,
   ``(ab|[a-c]b)*``; like ``re``, the reader first moves a prefix all branches share out);
3. polynomial shapes: unbounded repeats that can consume the same run of characters one after
   another before something that can fail. Searching adds one more: every start position can
   run the first repeat over the rest of the value (``[a-z]+@corp``, ``.*secret``). Values
   allow linear patterns only; keys, at most 64 characters, allow up to cubic;
4. as a backstop for what the structure misses, the compiled pattern runs on a few adversarial
   probes growing 4x up to the real maximum size under a CPU-time budget (thread CPU time, so a
   busy machine does not refuse a good pattern; a probe near the budget is measured three times).

The check costs milliseconds for a sound pattern; the probes stop at the first one over budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .redaction_errors import RedactionPatternError
from .redaction_regex import (
    INF,
    Alt,
    Anchor,
    Backref,
    Chars,
    Group,
    IfGroup,
    Look,
    Node,
    RegexSyntaxError,
    Repeat,
    parse,
    width,
)

MAX_PATTERN_CHARS = 1024
MAX_KEY_CHARS = 64  # longer keys are sensitive without asking the extra key patterns
# A repeat whose count may vary by more than this behaves like an unbounded one on long input.
_LONG_REPEAT = 64
_MAX_DEGREE = {"key": 3, "value": 1}  # largest allowed polynomial degree of the run time
_MAX_RUNS = 64

# CPU seconds: (per probe, all probes) for each kind of pattern.
_BUDGET = {"key": (0.005, 0.050), "value": (0.050, 0.250)}
_FIX = ("use possessive quantifiers ('a++', '\\w*+') or atomic groups ('(?>...)'), bound repeats "
        "('{1,64}'), or anchor the pattern on a literal prefix")
_FIX_SEARCHED = ("bound the repeat ('{1,64}' instead of '+'), or start the pattern so it cannot start "
                 "again inside the repeat's run: with a literal the repeat cannot match, or a look-behind "
                 "such as '(?<![\\w-])' (value patterns are searched at every position)")
_FIX_DOT = "drop the leading/trailing '.*' (value patterns are already searched anywhere in the string); "


class CheckedPattern(NamedTuple):
    regex: re.Pattern[str]
    shortest: int  # the fewest characters a match takes


def check_pattern(setting: str, index: int, pattern: object, *, key: bool,
                  scan_chars: int = 10240) -> CheckedPattern:
    """Compile ``pattern`` (case-insensitive) for a key or a value, or raise RedactionPatternError.

    ``scan_chars`` is the longest text a value pattern is searched in; the probes use it.
    """
    where = f"{setting}[{index}]"
    kind = "key" if key else "value"
    compiled = _compile(where, pattern)
    assert isinstance(pattern, str)
    try:
        tree = parse(pattern)
        shortest = width(tree.items, tree.groups)[0]
        if kind == "value" and shortest == 0:
            raise RedactionPatternError(where, pattern, "it can match the empty string, so it would redact every value",
                                        "require at least one character (use '+' instead of '*')")
        problem = _structural_problem(tree.items, tree.alphabet, kind, scan_chars)
    except RecursionError:
        raise RedactionPatternError(where, pattern, "it is nested too deeply to check", "flatten the groups") from None
    except RegexSyntaxError as exc:
        raise RedactionPatternError(where, pattern, f"the safety check cannot read it ({exc})",
                                    "write it with plainer syntax") from None
    if problem is None:
        problem = _timing_problem(compiled, _probe_units(tree.items), kind, scan_chars)
    if problem:
        raise RedactionPatternError(where, pattern, problem, _fix(pattern, kind, problem))
    return CheckedPattern(compiled, shortest)


def _compile(where: str, pattern: object) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise RedactionPatternError(where, pattern, f"expected a regex string, got {type(pattern).__name__}",
                                    "pass a list of strings")
    if not pattern.strip():
        raise RedactionPatternError(where, pattern, "empty pattern", "remove it or write a real regex")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RedactionPatternError(where, pattern[:64] + "...", f"pattern is {len(pattern)} characters long",
                                    f"keep each pattern under {MAX_PATTERN_CHARS} characters; split it into several")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except (re.error, RecursionError, OverflowError) as exc:
        raise RedactionPatternError(where, pattern, f"does not compile ({exc})",
                                    "check the regex syntax (Python 're' module)") from None


def _structural_problem(items: tuple[Node, ...], alphabet: frozenset[str], kind: str, scan_chars: int) -> str | None:
    problem = exponential_problem(items, alphabet)
    if problem:
        return f"catastrophic backtracking risk: {problem}"
    degree = polynomial_degree(items, alphabet, searched=kind == "value")
    if degree <= _MAX_DEGREE[kind]:
        return None
    why = "unbounded repeats can share out the same characters before a part that can fail"
    if kind == "value":
        why = f"a search tries every start position, and {why}; values are searched up to {scan_chars} characters"
    else:
        why = f"{why}; keys are matched up to {MAX_KEY_CHARS} characters"
    return (f"catastrophic backtracking: run time grows super-linearly with input length (about n^{degree} "
            f"steps for n characters: {why})")


def _fix(pattern: str, kind: str, problem: str) -> str:
    fix = _FIX_SEARCHED if kind == "value" and "super-linearly" in problem else _FIX
    if kind == "value" and (pattern.startswith((".*", ".+")) or pattern.endswith((".*", ".+"))):
        return _FIX_DOT + fix
    return fix


# -- character sets of a tree ------------------------------------------------------------------


def consumable(items: Iterable[Node], alphabet: frozenset[str]) -> frozenset[str]:
    """Every character some single-character item in ``items`` can take (over-approximation)."""
    out: set[str] = set()
    for node in items:
        if isinstance(node, Chars):
            out |= node.chars
        elif isinstance(node, (Repeat, Group)):
            out |= consumable(node.body, alphabet)
        elif isinstance(node, Alt):
            for branch in node.branches:
                out |= consumable(branch, alphabet)
        elif isinstance(node, IfGroup):
            out |= consumable(node.yes + (node.no or ()), alphabet)
        elif isinstance(node, Backref):
            out |= alphabet
    return frozenset(out)


def first_chars(items: Sequence[Node]) -> tuple[frozenset[str], bool] | None:
    """(characters a match of ``items`` can start with, whether it can be empty); None: unknown."""
    acc: set[str] = set()
    for node in items:
        if isinstance(node, Chars):
            return frozenset(acc | node.chars), False
        if isinstance(node, (Anchor, Look)):
            continue
        if isinstance(node, Group):
            sub = first_chars(node.body)
        elif isinstance(node, Repeat):
            sub = first_chars(node.body)
            if sub is not None and node.lo == 0:
                sub = (sub[0], True)
        elif isinstance(node, Alt):
            parts = [first_chars(branch) for branch in node.branches]
            if any(p is None for p in parts):
                return None
            sub = (frozenset().union(*(p[0] for p in parts)), any(p[1] for p in parts))  # type: ignore[index]
        else:
            return None
        if sub is None:
            return None
        acc |= sub[0]
        if not sub[1]:
            return frozenset(acc), False
    return frozenset(acc), True


def _backtracks(node: Node) -> bool:
    return isinstance(node, Repeat) and node.mode != "possessive"


def mandatory_chars(items: Sequence[Node]) -> list[frozenset[str]]:
    """Sets of the single characters every match of ``items`` consumes (its top level)."""
    out: list[frozenset[str]] = []
    for node in items:
        if isinstance(node, Chars):
            out.append(node.chars)
        elif isinstance(node, Group) and not node.atomic:
            out.extend(mandatory_chars(node.body))
        elif _backtracks(node) and node.lo >= 1 and len(node.body) == 1 \
                and isinstance(node.body[0], Chars):  # type: ignore[union-attr]
            out.append(node.body[0].chars)  # type: ignore[union-attr]
    return out


# -- exponential shapes --------------------------------------------------------------------------

_NESTED = ("nested quantifier: a variable repeat inside another repeat (like '(a+)+' or '(\\w+\\s?)*') "
           "can try exponentially many splits")
_TWO_EMPTY = "ambiguous alternation inside a repeat (like '(a|a)*'): two branches match the same text"
_SAME_START = ("ambiguous alternation inside a repeat (like '(a|ab)+' or '(x|x?)*'): branches can start "
               "with the same character")


def exponential_problem(items: Sequence[Node], alphabet: frozenset[str],
                        outer: Sequence[Node] | None = None) -> str | None:
    """Name the first construct in ``items`` that can backtrack exponentially, or None.

    ``outer`` is the body of the innermost enclosing repeat that can run many times."""
    for node in items:
        found: str | None = None
        if _backtracks(node):
            assert isinstance(node, Repeat)
            if outer is not None and node.lo != node.hi:
                inner = consumable(node.body, alphabet)
                if not any(sep and not (sep & inner) for sep in mandatory_chars(outer)):
                    return _NESTED
            many = node.hi >= 3
            found = (ambiguous_alternation(node.body) if many else None) or \
                exponential_problem(node.body, alphabet, node.body if many else outer)
        elif isinstance(node, Repeat) or (isinstance(node, Group) and node.atomic):
            found = exponential_problem(node.body, alphabet)  # possessive / atomic: no way back in
        elif isinstance(node, Group):
            found = exponential_problem(node.body, alphabet, outer)
        elif isinstance(node, Alt):
            found = next(filter(None, (exponential_problem(b, alphabet, outer) for b in node.branches)), None)
        elif isinstance(node, Look):
            found = exponential_problem(node.body, alphabet)
        elif isinstance(node, IfGroup):
            found = exponential_problem(node.yes, alphabet, outer) or exponential_problem(node.no or (), alphabet, outer)
        if found:
            return found
    return None


def ambiguous_alternation(body: Sequence[Node]) -> str | None:
    for node in body:
        if isinstance(node, Group) and not node.atomic:
            found = ambiguous_alternation(node.body)
            if found:
                return found
        if not isinstance(node, Alt):
            continue
        firsts = [first_chars(branch) for branch in node.branches]
        if sum(1 for f in firsts if f is not None and f[1]) > 1:
            return _TWO_EMPTY
        known = [f[0] for f in firsts if f is not None and not f[1]]
        if any(a & b for i, a in enumerate(known) for b in known[i + 1:]):
            return _SAME_START
    return None


# -- polynomial shapes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """A long run of characters that ``degree`` repeats (the search loop counts as one) can each
    take a share of: every repeat on it takes ``chars``, and the items between them need one
    character from each set in ``seps`` to appear in the run."""

    chars: frozenset[str]
    seps: frozenset[frozenset[str]]
    degree: int
    # For the search loop: the characters allowed just before a start (a pattern that begins
    # with '^', '\b' or a look-behind cannot start again in the middle of a run of others).
    before: frozenset[str] | None = None


class _Flow:
    """Carries runs through a pattern. ``worst`` is the highest degree of a run that meets a
    part that can fail on it: only then does the matcher try every way to share the run out.
    Parts under a choice (an optional repeat, one branch of several) are not failure points on
    their own: the match can go the other way."""

    def __init__(self, alphabet: frozenset[str]) -> None:
        self.alphabet = alphabet
        self.worst = 0

    def fail_point(self, runs: Iterable[_Run], accepts: frozenset[str] | None = None) -> None:
        for run in runs:
            if accepts is None or run.chars - accepts:
                self.worst = max(self.worst, run.degree)

    def items(self, items: Sequence[Node], runs: set[_Run], mandatory: bool = True) -> set[_Run]:
        for node in items:
            runs = self.node(node, runs, mandatory)
            if len(runs) > _MAX_RUNS:
                runs = set(sorted(runs, key=lambda r: -r.degree)[:_MAX_RUNS])
        return runs

    def node(self, node: Node, runs: set[_Run], mandatory: bool) -> set[_Run]:
        if isinstance(node, Chars):
            if mandatory:
                self.fail_point(runs, node.chars)
            return {_Run(r.chars, r.seps if r.chars <= node.chars else r.seps | {node.chars}, r.degree, r.before)
                    for r in runs if r.chars & node.chars}
        if isinstance(node, (Anchor, Look, Backref)):
            if mandatory:
                self.fail_point(runs)
            return runs
        if isinstance(node, Group):
            return self.items(node.body, runs, mandatory)
        if isinstance(node, (Alt, IfGroup)):
            return self.choice(node, runs, mandatory)
        assert isinstance(node, Repeat)
        return self.repeat(node, runs, mandatory)

    def choice(self, node: Alt | IfGroup, runs: set[_Run], mandatory: bool) -> set[_Run]:
        branches = node.branches if isinstance(node, Alt) else (node.yes, node.no or ())
        out: set[_Run] = set()
        for run in runs:
            passed = set().union(*(self.items(b, {run}, False) for b in branches))
            if not passed and mandatory:
                self.fail_point((run,))
            out |= passed
        return out

    def repeat(self, node: Repeat, runs: set[_Run], mandatory: bool) -> set[_Run]:
        skipped = set(runs) if node.lo == 0 else set()
        first_pass = mandatory and node.lo > 0
        if node.hi != INF and node.hi - node.lo <= _LONG_REPEAT:
            return skipped | self.items(node.body, set(runs), first_pass)
        # A long repeat: it extends every run it can share, and starts one of its own.
        inner = _Flow(self.alphabet)
        inner.items(node.body, set())
        self.worst = max(self.worst, inner.worst)
        chars = consumable(node.body, self.alphabet)
        chained = set()
        for run in runs:
            shared = run.chars & chars
            if shared and all(sep & shared for sep in run.seps) and (run.before is None or shared & run.before):
                chained.add(_Run(shared, run.seps, run.degree + 1, run.before))
            elif first_pass:
                self.fail_point((run,))
        return skipped | chained | {_Run(chars, frozenset(), 1)}


def polynomial_degree(items: Sequence[Node], alphabet: frozenset[str], *, searched: bool) -> int:
    """The degree of the polynomial the worst-case run time grows by (1 = linear, 0 = bounded)."""
    flow = _Flow(alphabet)
    start: set[_Run] = set()
    if searched and not (items and items[0] == Anchor("A")):
        start.add(_Run(alphabet, frozenset(), 1, _allowed_before(items, alphabet)))
    end = flow.items(items, start)
    if not searched:
        flow.fail_point(end)  # fullmatch: the end of the text must come next
    return flow.worst


def _allowed_before(items: Sequence[Node], alphabet: frozenset[str]) -> frozenset[str] | None:
    """What may precede a match, when the pattern's first item says (None: anything)."""
    first = items[0] if items else None
    if first == Anchor("^"):
        return frozenset("\n")  # with (?m); without it '^' only matches at the very start
    if isinstance(first, Look) and first.behind and len(first.body) == 1 and isinstance(first.body[0], Chars):
        chars = first.body[0].chars
        return alphabet - chars if first.negative else chars
    if first == Anchor("b") and len(items) > 1 and isinstance(items[1], Chars):
        word = frozenset(c for c in alphabet if c.isalnum() or c == "_")
        nxt = items[1].chars
        if nxt <= word:
            return alphabet - word
        if not nxt & word:
            return word
    return None


# -- timing backstop -----------------------------------------------------------------------------


def _probe_units(items: Sequence[Node]) -> list[str]:
    """Strings to repeat into adversarial probes: characters the pattern's items take."""
    chars: list[str] = []

    def add(c: str) -> None:
        if c not in chars and len(chars) < 12:
            chars.append(c)

    def walk(nodes: Iterable[Node]) -> None:
        for node in nodes:
            if isinstance(node, Chars):
                pick = next((p for p in ("a", "0", " ", "-", ".") if p in node.chars), None)
                if pick is not None or node.chars:
                    add(pick if pick is not None else min(node.chars))
            elif isinstance(node, (Repeat, Group, Look)):
                walk(node.body)
            elif isinstance(node, Alt):
                for branch in node.branches:
                    walk(branch)

    walk(items)
    for c in ("a", "0", " ", "-", "@"):
        add(c)
    return chars[:8] + [a + b for i, a in enumerate(chars[:4]) for b in chars[i + 1:4]]


def _cpu_seconds(fn: Callable[[str], Any], probe: str) -> float:
    start = time.thread_time()
    fn(probe)
    return time.thread_time() - start


def _timing_problem(compiled: re.Pattern[str], units: list[str], kind: str, scan_chars: int) -> str | None:
    per_probe, total_budget = _BUDGET[kind]
    fn = compiled.fullmatch if kind == "key" else compiled.search
    # Growing sizes: a pattern the structure check missed is caught on a small probe before a
    # big one can take long (each step at most 4x: a quadratic cost grows 16x at most).
    sizes = (16, MAX_KEY_CHARS) if kind == "key" else (64, 256, 1024, 4096, max(4096, scan_chars))
    spent = 0.0
    for size in sizes:
        for unit in units:
            probe = (unit * (size // len(unit) + 1))[:size] + "\x00"
            t = _cpu_seconds(fn, probe)
            if per_probe < t < 3 * per_probe:  # near the line: a collection may have hit the run
                t = min(t, _cpu_seconds(fn, probe), _cpu_seconds(fn, probe))
            spent += t
            if t > per_probe:
                return (f"catastrophic backtracking: took {t * 1000:.0f} ms of CPU on a {size}-character probe ({unit!r} repeated); "
                        f"the budget is {per_probe * 1000:.0f} ms")
            if spent > total_budget:
                return (f"catastrophic backtracking: adversarial probes took {spent * 1000:.0f} ms of CPU in total "
                        f"(budget {total_budget * 1000:.0f} ms)")
    return None
