"""Python regular-expression syntax as a small tree, for checking user redaction patterns.

``parse`` reads a pattern that ``re.compile`` has already accepted and returns the items the
safety checker (``redaction_safety``) reasons about: single characters (as sets), repeats,
groups, alternations, look-arounds, anchors and back-references. It follows the documented
syntax of the ``re`` module (flags, escapes, classes, ``{m,n}``, lazy and possessive
quantifiers, atomic groups, conditionals) and, like ``re``, turns an alternation of single
characters into one set and moves a prefix shared by all branches out of the alternation, so the
tree has the shape the matcher runs. It depends on no private part of ``re``.

Character sets are finite: each holds the members of a sample alphabet (Latin-1, a few letters of
other scripts, and every character the pattern names). That is enough to tell whether two sets
can match the same character, which is all the checker asks.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Union

INF = sys.maxsize  # the upper bound of an unbounded repeat

_SAMPLE = frozenset(chr(i) for i in range(256)) | frozenset("\u00e9\u0416\u03a9\u20ac\u4e2d\U0001f600\u2028")
_ESCAPED_CHAR = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|N\{([^}]*)\}|([0-7]{1,3}))")
_FLAG_LETTERS = "aiLmsux"
_GLOBAL_FLAGS = re.compile(rf"\(\?([{_FLAG_LETTERS}]+)\)")
_SCOPED_FLAGS = re.compile(rf"([{_FLAG_LETTERS}]*)(?:-([{_FLAG_LETTERS}]+))?:")
_QUANTIFIER = re.compile(r"\{(\d*)(,\d*)?\}")
_ASCII_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_ASCII_SPACE = frozenset(" \t\n\r\f\v")
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


class RegexSyntaxError(ValueError):
    """The pattern uses syntax this reader does not know (``re`` accepted it)."""


@dataclass(frozen=True, slots=True)
class Chars:
    """One character out of ``chars``. ``plain`` marks a literal or a non-negated class: the
    items ``re`` merges when they are an alternation's only branches."""

    chars: frozenset[str]
    plain: bool = True


@dataclass(frozen=True, slots=True)
class Repeat:
    lo: int
    hi: int  # INF when unbounded
    body: tuple[Node, ...]
    mode: str = "greedy"  # or "lazy", "possessive"


@dataclass(frozen=True, slots=True)
class Group:
    """A capturing group (``index``), an atomic group, or a group with scoped flags."""

    body: tuple[Node, ...]
    index: int | None = None
    atomic: bool = False
    scoped: bool = False

    @property
    def transparent(self) -> bool:
        """``(?:...)``: re splices its items into the enclosing sequence."""
        return self.index is None and not self.atomic and not self.scoped


@dataclass(frozen=True, slots=True)
class Alt:
    branches: tuple[tuple[Node, ...], ...]


@dataclass(frozen=True, slots=True)
class Look:
    body: tuple[Node, ...]
    behind: bool
    negative: bool


@dataclass(frozen=True, slots=True)
class Anchor:
    kind: str  # "^", "$", "A", "Z", "b", "B"


@dataclass(frozen=True, slots=True)
class Backref:
    group: int


@dataclass(frozen=True, slots=True)
class IfGroup:
    group: int
    yes: tuple[Node, ...]
    no: tuple[Node, ...] | None


Node = Union[Chars, Repeat, Group, Alt, Look, Anchor, Backref, IfGroup]  # noqa: UP007 - a runtime alias


@dataclass(frozen=True)
class Pattern:
    items: tuple[Node, ...]
    groups: dict[int, tuple[Node, ...]]  # capturing group bodies, for back-reference widths
    alphabet: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Flags:
    icase: bool
    dotall: bool = False
    verbose: bool = False
    ascii: bool = False

    def changed(self, on: str, off: str = "") -> _Flags:
        def pick(letter: str, now: bool) -> bool:
            return True if letter in on else False if letter in off else now

        return _Flags(pick("i", self.icase), pick("s", self.dotall), pick("x", self.verbose), pick("a", self.ascii))


def parse(pattern: str, *, ignore_case: bool = True) -> Pattern:
    """The tree of ``pattern`` (already compiled by ``re``); RegexSyntaxError if unreadable."""
    reader = _Reader(pattern, _alphabet(pattern))
    try:
        flags = reader.global_flags(_Flags(icase=ignore_case))
        items = reader.alternation(flags)
    except (IndexError, ValueError, KeyError) as exc:
        raise RegexSyntaxError(f"cannot read the pattern at position {reader.pos}: {exc}") from None
    if reader.pos != len(pattern):
        raise RegexSyntaxError(f"unexpected {pattern[reader.pos]!r} at position {reader.pos}")
    return Pattern(items, reader.groups, reader.alphabet)


def width(items: tuple[Node, ...], groups: dict[int, tuple[Node, ...]]) -> tuple[int, int]:
    """(shortest, longest) text ``items`` can match; longest is INF when unbounded."""
    lo = hi = 0
    for node in items:
        a, b = _node_width(node, groups)
        lo, hi = lo + a, min(INF, hi + b)
    return lo, hi


def _node_width(node: Node, groups: dict[int, tuple[Node, ...]]) -> tuple[int, int]:
    if isinstance(node, Chars):
        return 1, 1
    if isinstance(node, Repeat):
        a, b = width(node.body, groups)
        return min(INF, a * node.lo), (INF if b and node.hi == INF else min(INF, b * node.hi))
    if isinstance(node, Group):
        return width(node.body, groups)
    if isinstance(node, Alt):
        sizes = [width(branch, groups) for branch in node.branches]
        return min(s[0] for s in sizes), max(s[1] for s in sizes)
    if isinstance(node, Backref):
        return width(groups.get(node.group, ()), groups)
    if isinstance(node, IfGroup):
        yes, no = width(node.yes, groups), width(node.no or (), groups)
        return min(yes[0], no[0]), max(yes[1], no[1])
    return 0, 0  # Look, Anchor


def _alphabet(pattern: str) -> frozenset[str]:
    """The sample characters plus every character the pattern names, in both cases."""
    named = set(pattern)
    for m in _ESCAPED_CHAR.finditer(pattern):
        hexa = m.group(1) or m.group(2) or m.group(3)
        try:
            if hexa:
                named.add(chr(int(hexa, 16)))
            elif m.group(4) is not None:
                named.add(unicodedata.lookup(m.group(4)))
            else:
                named.add(chr(int(m.group(5), 8)))
        except (KeyError, ValueError, OverflowError):
            continue
    cased = {v for c in named for v in (c.lower(), c.upper()) if len(v) == 1}
    return _SAMPLE | named | cased


class _Reader:
    def __init__(self, pattern: str, alphabet: frozenset[str]) -> None:
        self.text = pattern
        self.pos = 0
        self.alphabet = alphabet
        self.groups: dict[int, tuple[Node, ...]] = {}
        self.names: dict[str, int] = {}
        self.next_group = 1

    # -- low level --------------------------------------------------------------------------

    def peek(self, offset: int = 0) -> str | None:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else None

    def take(self, expected: str | None = None) -> str:
        c = self.text[self.pos]
        if expected is not None and c != expected:
            raise ValueError(f"expected {expected!r}, found {c!r}")
        self.pos += 1
        return c

    def take_if(self, text: str) -> bool:
        if self.text.startswith(text, self.pos):
            self.pos += len(text)
            return True
        return False

    def until(self, end: str) -> str:
        stop = self.text.index(end, self.pos)
        value, self.pos = self.text[self.pos:stop], stop + len(end)
        return value

    def skip_verbose(self, flags: _Flags) -> None:
        while flags.verbose and self.peek() is not None:
            c = self.peek()
            if c in " \t\n\r\f\v":
                self.pos += 1
            elif c == "#":
                nl = self.text.find("\n", self.pos)
                self.pos = len(self.text) if nl < 0 else nl + 1
            else:
                return

    # -- structure --------------------------------------------------------------------------

    def global_flags(self, flags: _Flags) -> _Flags:
        while True:
            self.skip_verbose(flags)
            m = _GLOBAL_FLAGS.match(self.text, self.pos)
            if m is None:
                return flags
            flags, self.pos = flags.changed(m.group(1)), m.end()

    def alternation(self, flags: _Flags) -> tuple[Node, ...]:
        branches = [self.sequence(flags)]
        while self.take_if("|"):
            branches.append(self.sequence(flags))
        return _alternation_items(branches)

    def sequence(self, flags: _Flags) -> list[Node]:
        items: list[Node] = []
        while True:
            self.skip_verbose(flags)
            c = self.peek()
            if c is None or c in "|)":
                break
            if c in "*+?" or (c == "{" and self.quantifier_ahead()):
                items[-1] = self.repeat(items[-1])
                continue
            node = self.atom(flags)
            if node is not None:
                items.append(node)
        out: list[Node] = []
        for node in items:
            if isinstance(node, Group) and node.transparent:
                out.extend(node.body)
            else:
                out.append(node)
        return out

    def quantifier_ahead(self) -> bool:
        return self.peek(1) != "}" and _QUANTIFIER.match(self.text, self.pos) is not None

    def repeat(self, item: Node) -> Node:
        c = self.take()
        if c == "{":
            lo_text, comma, hi_text = self.until("}").partition(",")
            lo = int(lo_text) if lo_text else 0
            hi = (int(hi_text) if hi_text else INF) if comma else lo
        else:
            lo, hi = {"*": (0, INF), "+": (1, INF), "?": (0, 1)}[c]
        mode = "lazy" if self.take_if("?") else "possessive" if self.take_if("+") else "greedy"
        body = item.body if isinstance(item, Group) and item.transparent else (item,)
        return Repeat(lo, hi, tuple(body), mode)

    def atom(self, flags: _Flags) -> Node | None:
        c = self.take()
        if c == "\\":
            return self.escape(flags)
        if c == "[":
            return self.char_class(flags)
        if c == "(":
            return self.group(flags)
        if c == ".":
            return Chars(self.alphabet if flags.dotall else self.alphabet - {"\n"}, plain=False)
        if c in "^$":
            return Anchor(c)
        return Chars(self.literal(c, flags))

    def group(self, flags: _Flags) -> Node | None:
        if not self.take_if("?"):
            return self.capture(flags, None)
        if self.take_if("P<"):
            return self.capture(flags, self.until(">"))
        if self.take_if("P="):
            return Backref(self.names[self.until(")")])
        if self.take_if("#"):
            self.until(")")
            return None  # a comment; a quantifier after it applies to the item before
        if self.take_if(":"):
            return self.closed(Group(tuple(self.alternation(flags))))
        if self.take_if(">"):
            return self.closed(Group(tuple(self.alternation(flags)), atomic=True))
        for prefix, behind, negative in (("=", False, False), ("!", False, True),
                                         ("<=", True, False), ("<!", True, True)):
            if self.take_if(prefix):
                return self.closed(Look(tuple(self.alternation(flags)), behind, negative))
        if self.take_if("("):
            return self.conditional(flags)
        m = _SCOPED_FLAGS.match(self.text, self.pos)
        if m is None:
            raise ValueError("unknown group extension")
        self.pos = m.end()
        inner = flags.changed(m.group(1), m.group(2) or "")
        return self.closed(Group(tuple(self.alternation(inner)), scoped=True))

    def capture(self, flags: _Flags, name: str | None) -> Node:
        index = self.next_group
        self.next_group += 1
        if name is not None:
            self.names[name] = index
        body = tuple(self.alternation(flags))
        self.groups[index] = body
        return self.closed(Group(body, index))

    def conditional(self, flags: _Flags) -> Node:
        ref = self.until(")")
        group = self.names[ref] if ref in self.names else int(ref)
        yes = tuple(self.sequence(flags))
        no = tuple(self.sequence(flags)) if self.take_if("|") else None
        return self.closed(IfGroup(group, yes, no))

    def closed(self, node: Node) -> Node:
        self.take(")")
        return node

    # -- characters -------------------------------------------------------------------------

    def literal(self, c: str, flags: _Flags) -> frozenset[str]:
        if not flags.icase:
            return frozenset(c)
        return frozenset(v for v in (c, c.lower(), c.upper()) if len(v) == 1)

    def category(self, letter: str, flags: _Flags) -> frozenset[str] | None:
        low = letter.lower()
        if low == "d":
            chars = frozenset(c for c in self.alphabet if ("0" <= c <= "9" if flags.ascii else c.isdecimal()))
        elif low == "s":
            chars = frozenset(c for c in self.alphabet if (c in _ASCII_SPACE if flags.ascii else c.isspace()))
        elif low == "w":
            chars = frozenset(c for c in self.alphabet
                              if (c in _ASCII_WORD if flags.ascii else c.isalnum() or c == "_"))
        else:
            return None
        return self.alphabet - chars if letter.isupper() else chars

    def escaped_char(self, c: str, in_class: bool) -> str | None:
        """The character an escape names (the backslash and ``c`` are already read)."""
        if c in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[c]
        size = {"x": 2, "u": 4, "U": 8}.get(c)
        if size:
            digits = self.text[self.pos:self.pos + size]
            self.pos += size
            return chr(int(digits, 16))
        if c == "N":
            self.take("{")
            return unicodedata.lookup(self.until("}"))
        if c == "0" or (in_class and c in "01234567"):
            digits = c
            while len(digits) < 3 and (self.peek() or "x") in "01234567":
                digits += self.take()
            return chr(int(digits, 8))
        if c.isdigit():
            return None  # a back-reference (outside a class) or an octal escape: see escape()
        if c.isascii() and c.isalpha():
            raise ValueError(f"bad escape \\{c}")
        return c

    def escape(self, flags: _Flags) -> Node:
        c = self.take()
        if c in "AZbB":
            return Anchor(c)
        cat = self.category(c, flags)
        if cat is not None:
            return Chars(cat)
        if c.isdigit() and c != "0":
            digits = c
            if (self.peek() or "x").isdigit():
                digits += self.take()
                if digits[0] in "01234567" and digits[1] in "01234567" and (self.peek() or "x") in "01234567":
                    digits += self.take()
                    return Chars(self.literal(chr(int(digits, 8)), flags))
            return Backref(int(digits))
        char = self.escaped_char(c, in_class=False)
        return Chars(self.literal(char, flags))  # type: ignore[arg-type]

    def class_member(self, flags: _Flags) -> tuple[str | None, frozenset[str]]:
        """(the character, if the member is one character, for ranges; its set)."""
        c = self.take()
        if c != "\\":
            return c, self.literal(c, flags)
        c = self.take()
        cat = self.category(c, flags)
        if cat is not None:
            return None, cat
        char = "\b" if c == "b" else self.escaped_char(c, in_class=True)
        if char is None:
            raise ValueError(f"bad escape \\{c} in a class")
        return char, self.literal(char, flags)

    def char_class(self, flags: _Flags) -> Node:
        negate = self.take_if("^")
        chars: set[str] = set()
        first = True
        while first or self.peek() != "]":
            first = False
            start, members = self.class_member(flags)
            if self.peek() == "-" and self.peek(1) not in (None, "]"):
                self.take("-")
                end, _ = self.class_member(flags)
                if start is None or end is None:
                    raise ValueError("bad character range")
                members = self.char_range(start, end, flags)
            chars |= members
        self.take("]")
        if negate:
            return Chars(self.alphabet - chars, plain=False)
        return Chars(frozenset(chars))

    def char_range(self, start: str, end: str, flags: _Flags) -> frozenset[str]:
        lo, hi = ord(start), ord(end)
        inside = {c for c in self.alphabet if lo <= ord(c) <= hi}
        if flags.icase:
            inside |= {c for c in self.alphabet
                       if any(len(v) == 1 and lo <= ord(v) <= hi for v in (c.lower(), c.upper()))}
        return frozenset(inside)


def _alternation_items(branches: list[list[Node]]) -> tuple[Node, ...]:
    """An alternation the way ``re`` builds it: the prefix every branch shares is moved out,
    and branches that are each one plain character become a single set."""
    if len(branches) == 1:
        return tuple(branches[0])
    prefix: list[Node] = []
    while all(branches) and all(_same_leaf(b[0], branches[0][0]) for b in branches[1:]):
        prefix.append(branches[0][0])
        branches = [b[1:] for b in branches]
    if all(len(b) == 1 and isinstance(b[0], Chars) and b[0].plain for b in branches):
        merged = frozenset().union(*(b[0].chars for b in branches))  # type: ignore[union-attr]
        return (*prefix, Chars(merged))
    return (*prefix, Alt(tuple(tuple(b) for b in branches)))


def _same_leaf(a: Node, b: Node) -> bool:
    # re compares items by value only for single characters, anchors and back-references.
    return isinstance(a, (Chars, Anchor, Backref)) and a == b
