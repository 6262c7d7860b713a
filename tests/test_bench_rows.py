"""The bench table's rows from a recorded run (make bench, 2026-12-02): every goal of issue 22
has its row, and each verdict follows from the raw figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import Plan, docs_section
from bench.suite.rows import build_rows

RESULTS = Path(__file__).resolve().parent / "data" / "bench-results-2026-12-02.json"


@pytest.fixture(scope="module")
def rows():
    res = json.loads(RESULTS.read_text())
    return res, {row.metric: row for row in build_rows(res, Plan(**res["plan"]))}


def _row(rows, start: str):
    found = [row for metric, row in rows[1].items() if metric.startswith(start)]
    assert len(found) == 1, (start, sorted(rows[1]))
    return found[0]


@pytest.mark.parametrize("start, goal, met", [
    ("(b) Celery prefork -c2 (2000 no-op tasks), throughput kept", ">= 85%", False),
    ("(b) Celery prefork -c2 (2000 tasks), added per task", "<= 1/15 of ref", False),
    ("(b) RQ fork worker (1000 jobs), added per job", "<= 1/2 of ref", None),  # the reference came out negative
    ("(c) RSS added to the RQ forking parent", "<= 5 MiB", False),
    ("(f) cron script start", "<= 60 ms", True),
    ("(a) Celery prefork 500 tasks -> real brain, delivered", ">= 90% of min(ceiling, offered)", True),
    ("(a) RQ fork 500 tasks -> real brain, delivered", ">= 90% of min(ceiling, offered)", True),
    ("(a) Dramatiq -p2 -t4 500 tasks -> real brain, delivered", ">= 90% of min(ceiling, offered)", False),
])
def test_each_issue_22_goal_has_a_row_with_its_verdict(rows, start, goal, met):
    row = _row(rows, start)
    assert (row.goal, row.met) == (goal, met)


def test_throughput_kept_is_the_ratio_of_the_medians(rows):
    res, _ = rows
    oh = res["overhead_prefork"]
    assert _row(rows, "(b) Celery prefork -c2 (2000 no-op tasks), throughput kept").ours == pytest.approx(
        100 * oh["none"] / oh["ours"], rel=1e-6)


def test_the_docs_section_names_machine_command_and_changes(rows):
    res, by_metric = rows
    text = docs_section(list(by_metric.values()), res["machine"], res, "make bench", 569.0, Plan(**res["plan"]))
    assert "Command: `make bench`" in text and "Code: commit 24ee096" in text
    assert "What changed since the last run: since the table of 2026-11-29" in text
