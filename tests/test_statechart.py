"""The transitions table is the single source: the diagram page and the machine follow it."""

from __future__ import annotations

from pathlib import Path

import pytest
from transitions import Machine, MachineError

from z4j_bare.statechart import TRANSITIONS, RuntimeState, edges, machine_transitions, render_markdown, render_mermaid

ROOT = Path(__file__).resolve().parents[1]


def test_statechart_page_matches_table():
    assert (ROOT / "statecharts/runtime.md").read_text() == render_markdown(), (
        "statecharts/runtime.md drifted: run `python -m z4j_bare statechart --markdown > statecharts/runtime.md`")
    assert (ROOT / "statecharts/runtime.mmd").read_text() == render_mermaid()


def test_every_state_reachable_and_stopped_terminal():
    dests = {d for _, d, _, _ in edges()}
    assert set(RuntimeState) - {RuntimeState.INIT} <= dests
    assert not [e for e in edges() if e[0] == RuntimeState.STOPPED]


def test_every_edge_explained():
    assert all(t["why"] for t in TRANSITIONS)


def _machine(initial):
    class Model:
        pass

    model = Model()
    Machine(model=model, states=list(RuntimeState), transitions=machine_transitions(), initial=initial, auto_transitions=False)
    return model


@pytest.mark.parametrize("source, trigger, dest", [(s, t, d) for s, d, t, _ in edges()])
def test_each_edge_fires(source, trigger, dest):
    model = _machine(RuntimeState(source))
    model.trigger(trigger)
    assert model.state == RuntimeState(dest)


@pytest.mark.parametrize("source, trigger", [(RuntimeState.STOPPED, "start"), (RuntimeState.INIT, "handshake_ok"),
                                             (RuntimeState.DRAINING, "reconnect"), (RuntimeState.CONNECTING, "drained")])
def test_undeclared_edges_refused(source, trigger):
    model = _machine(source)
    with pytest.raises(MachineError):
        model.trigger(trigger)


def test_no_auto_transitions():
    assert not hasattr(_machine(RuntimeState.INIT), "to_RUNNING")
