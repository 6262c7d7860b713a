"""The error a refused user redaction pattern raises.

Apart from ``redaction_safety`` (which does the checking, and is loaded only when the user
configured patterns) so that catching the error never loads the checker.
"""

from __future__ import annotations


class RedactionPatternError(ValueError):
    """A user-supplied redaction pattern was refused when the Redactor was built.

    Patterns are configuration, not secrets, so the message quotes the pattern, names the
    setting it came from, says why it was refused and how to fix it.
    """

    def __init__(self, setting: str, pattern: object, reason: str, fix: str) -> None:
        self.setting = setting
        self.pattern = pattern
        self.reason = reason
        self.fix = fix
        super().__init__(f"{setting}: pattern {pattern!r} refused: {reason}. Fix: {fix}")
