"""The demo's Dramatiq app: ``dramatiq z4j_bare.demo_dramatiq`` (started by the demo when Redis runs).

The broker, its key namespace and the queue come from the environment the demo sets
(``Z4J_DEMO_*``). Creating ``DramatiqEngineAdapter`` is all the agent needs: the dramatiq
command's worker processes capture, and dramatiq starts the z4j agent process next to them
(docs/dramatiq.md). Nothing here runs unless the demo's dramatiq command imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from z4j_dramatiq import DramatiqEngineAdapter

QUEUE = os.environ.get("Z4J_DEMO_QUEUE", "z4j-demo")
NAMESPACE = os.environ.get("Z4J_DEMO_DRAMATIQ_NAMESPACE", "z4j-demo-dramatiq")

broker = RedisBroker(url=os.environ.get("Z4J_DEMO_BROKER", "redis://127.0.0.1:6379/0"), namespace=NAMESPACE)
dramatiq.set_broker(broker)
z4j = DramatiqEngineAdapter(broker=broker, capture_results=True)


@dramatiq.actor(queue_name=QUEUE, actor_name="dq_add", max_retries=0)
def dq_add(x: int, y: int) -> int:
    return x + y


@dramatiq.actor(queue_name=QUEUE, actor_name="dq_charge", max_retries=0)
def dq_charge(order_id: str, amount: float, card_number: str = "4111 1111 1111 1111") -> dict:
    # card_number is here to show redaction: it never reaches the brain in clear.
    return {"order_id": order_id, "charged": amount}


@dramatiq.actor(queue_name=QUEUE, actor_name="dq_flaky", max_retries=2, min_backoff=200, max_backoff=300)
def dq_flaky(n: int, first_attempt_marker: str) -> int:
    # Fails on its first attempt; Dramatiq's Retries middleware runs it again: task.retried, then success.
    marker = Path(first_attempt_marker)
    if not marker.exists():
        marker.write_text("tried")
        raise RuntimeError("transient glitch")
    return n * 2


@dramatiq.actor(queue_name=QUEUE, actor_name="dq_ship", max_retries=0)
def dq_ship(order_id: str, outage_marker: str) -> str:
    # Fails while the "carrier API" is down; the demo then retries it from the brain (by reference).
    if Path(outage_marker).exists():
        raise ConnectionError("carrier API unavailable")
    return f"shipped {order_id}"
