"""Canonical text of a *flat* event ``data`` dict, redacted, from remembered pieces.

Most events a worker emits are flat: strings, numbers, booleans and ``None``, and the strings
repeat from task to task (``task_name``, ``queue``, ``worker``, a result repr like ``"None"``).
For such a dict this gives exactly ``canonical_tree_text(redactor.scrub_data(data))``: each
``"key":value`` piece is made once by the redactor itself (``scrub_data({key: value})``) and
remembered; numbers are written directly (the redactor passes finite floats and 64-bit ints
through unchanged and decides a key's sensitivity whatever its value). A dict that is not flat,
holds a long or new-looking string, a duplicate key after redaction, a non-finite float, or
whose text might not fit ``max_event_bytes`` answers ``None``: the caller then takes the general
path, so the redactor's fitting rules never need repeating here. A test compares both paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .protocol.canonical import canonical_tree_text

if TYPE_CHECKING:
    from .redaction import Redactor

#: Strings up to this long are remembered (as a whole ``"key":"value"`` piece).
MAX_REMEMBERED_CHARS = 256
#: Remembered pieces per encoder; the memory is cleared when full (bounded, ~2 MiB at most).
MAX_REMEMBERED = 4096
MAX_FIELDS = 24
_INT64 = 1 << 63


class FlatDataEncoder:
    """``text(data)`` -> the redacted canonical text of ``data``, or None (use the general path)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        # Every piece is at most this long, so a dict of pieces fits when its text does: UTF-8 of
        # a str of n characters is at most 3n bytes (JSON escapes are ASCII).
        self._max_chars = redactor.max_event_bytes // 3
        self._strings: dict[tuple[str, str], tuple[str, str] | None] = {}
        self._keys: dict[str, tuple[str, str] | None] = {}

    def text(self, data: dict[str, Any]) -> str | None:
        if type(data) is not dict or len(data) > MAX_FIELDS:
            return None
        pieces = []
        strings = self._strings
        for k, v in data.items():
            if type(k) is not str:
                return None
            t = type(v)
            if t is str:
                piece = strings.get((k, v), False)
                if piece is False:
                    piece = self._string_piece(k, v)
            elif t is int:
                piece = self._key_piece(k)
                if piece is not None and -_INT64 <= v < _INT64 and piece[1][-1] == ":":
                    piece = (piece[0], piece[1] + str(v))
                else:
                    piece = self._number_piece(k, v)
            elif t is float:
                piece = self._key_piece(k)
                if piece is not None and piece[1][-1] == ":" and v - v == 0.0:  # finite
                    piece = (piece[0], piece[1] + float.__repr__(v))
                else:
                    piece = self._number_piece(k, v)
            elif v is None or t is bool:
                piece = self._key_piece(k)
                if piece is not None and piece[1][-1] == ":":
                    piece = (piece[0], piece[1] + ("null" if v is None else "true" if v else "false"))
                else:
                    piece = self._number_piece(k, v)
            else:
                return None
            if piece is None:
                return None
            pieces.append(piece)
        pieces.sort()
        for i in range(1, len(pieces)):
            if pieces[i][0] == pieces[i - 1][0]:
                return None  # two keys the redactor renames apart: its rule, not repeated here
        text = "{" + ",".join([p[1] for p in pieces]) + "}"
        return text if len(text) <= self._max_chars else None

    def _string_piece(self, key: str, value: str) -> tuple[str, str] | None:
        piece = self._piece(key, value)
        if len(value) <= MAX_REMEMBERED_CHARS:
            if len(self._strings) >= MAX_REMEMBERED:
                self._strings.clear()
            self._strings[(key, value)] = piece
        return piece

    def _key_piece(self, key: str) -> tuple[str, str] | None:
        """(redacted key, ``"key":``) when the key's numbers pass unchanged; for a sensitive key
        the whole redacted piece (``"key":"[REDACTED]"``), whatever the value."""
        piece = self._keys.get(key, False)
        if piece is False:
            piece = self._piece(key, 0)
            if piece is not None and piece[1].endswith(":0"):
                piece = (piece[0], piece[1][:-1])
            if len(self._keys) >= MAX_REMEMBERED:
                self._keys.clear()
            self._keys[key] = piece
        return piece

    def _number_piece(self, key: str, value: Any) -> tuple[str, str] | None:
        piece = self._key_piece(key)
        if piece is not None and piece[1][-1] != ":":
            return piece  # a sensitive key: redacted whatever the value
        return self._piece(key, value)  # a big int or a non-finite float: the redactor's own rule

    def _piece(self, key: str, value: Any) -> tuple[str, str] | None:
        out = self._redactor.scrub_data({key: value})
        if len(out) != 1 or "redaction_error" in out and key != "redaction_error":
            return None
        ((out_key, _),) = out.items()
        text = canonical_tree_text(out)
        if len(text) > self._max_chars:
            return None
        return out_key, text[1:-1]
