"""RQ fork worker: added cost per job with more rounds than `make bench` affords.

    .venv/bin/python bench/rq_fork_rounds.py [ROUNDS] [JOBS]     # default 5 rounds of 400 jobs

The same workload as the table's row (b) "RQ fork worker" (bench.suite.workloads.rq_fork: `rq
worker --burst`, span of RQ's own started_at/ended_at stamps / N), rounds alternating no agent /
ours / the reference so machine noise hits all three; prints each round and the medians.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.suite import workloads as w
from bench.suite.common import BrainProc, ref_python


def _print_round(runs: dict[str, list[float]]) -> None:
    print(json.dumps({a: [round(x, 2) for x in v] for a, v in runs.items()}), flush=True)


def main(rounds: int = 5, jobs: int = 400) -> None:
    ref = ref_python()
    with BrainProc() as brain:
        runs = w.alternating(rounds, lambda agent: w.rq_fork(agent, brain, jobs, ref), _print_round)
    med = {a: statistics.median(v) for a, v in runs.items()}
    print(f"medians ms/job: none {med['none']:.2f}, ours {med['ours']:.2f}, ref {med['ref']:.2f}; added: ours "
          f"{med['ours'] - med['none']:+.2f}, ref {med['ref'] - med['none']:+.2f} "
          f"(no-agent rounds spread {max(runs['none']) - min(runs['none']):.2f})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
