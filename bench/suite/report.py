"""The one table (metric | ours | reference | ratio | goal | met?) and the docs section."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODE = re.compile(r"^Code: commit ([0-9a-f]{7,40})", re.MULTILINE)
START = "<!-- bench:side-by-side:start (written by `make bench`; edit bench/suite/report.py instead) -->"
END = "<!-- bench:side-by-side:end -->"


@dataclass
class Row:
    metric: str
    ours: float | None
    ref: float | None
    unit: str = ""
    goal: str = "-"
    met: bool | None = None
    note: str = ""
    digits: int = 1

    def cells(self) -> list[str]:
        ratio = "-"
        if self.ours is not None and self.ref not in (None, 0):
            ratio = f"{self.ours / self.ref:.2f}"
        met = "-" if self.met is None else ("yes" if self.met else "NO")
        return [self.metric, _fmt(self.ours, self.unit, self.digits), _fmt(self.ref, self.unit, self.digits), ratio,
                self.goal, met]


def _fmt(value: float | None, unit: str, digits: int) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".strip()


HEADER = ["metric", "ours", "reference", "ratio ours/ref", "goal", "met?"]


def text_table(rows: list[Row]) -> str:
    cells = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for n, c in enumerate(cells):
        lines.append(" | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(out)


def notes(rows: list[Row]) -> list[str]:
    return [f"{r.metric}: {r.note}" for r in rows if r.note]


def write_docs(path: Path, section: str) -> None:
    """Put ``section`` right after the title of docs/performance.md, replacing a previous run's."""
    text = path.read_text()
    block = f"{START}\n{section.rstrip()}\n{END}\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda _m: block, text, flags=re.DOTALL)
    else:
        lines = text.splitlines(keepends=True)
        title = next(i for i, line in enumerate(lines) if line.startswith("# "))
        lines.insert(title + 1, "\n" + block)
        text = "".join(lines)
    path.write_text(text)


def machine_line(m: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in m["load"])
    return (f"{m['nproc']} CPUs ({m['cpu']}), {m['mem']} RAM, Linux {m['kernel']}, Python {m['python']}, "
            f"SQLite {m['sqlite']}; load average at start {load}")


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def code_commit(repo: Path) -> str:
    """The measured commit, marked when the checkout has uncommitted changes to tracked files."""
    head = _git(repo, "rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if _git(repo, "status", "--porcelain", "--untracked-files=no") else "")


def changes_since_last(repo: Path, doc: Path, limit: int = 8) -> str:
    """The commits since the one the table in ``doc`` was measured at (else the last commit)."""
    match = CODE.search(doc.read_text()) if doc.is_file() else None
    if match:
        span, what = f"{match.group(1)}..HEAD", f"commits since {match.group(1)}"
    else:
        span, what = "-1", "the last commit"
    subjects = [line if len(line) <= 90 else line[:87] + "..." for line in _git(repo, "log", "--format=%h %s", span).splitlines()]
    if not subjects:
        return f"none ({what}: no commit)"
    more = f"; and {len(subjects) - limit} more" if len(subjects) > limit else ""
    return f"{what}: " + "; ".join(subjects[:limit]) + more
