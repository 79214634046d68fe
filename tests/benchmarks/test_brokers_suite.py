"""The brokers suite's runner works at a tiny size against the real NATS, RabbitMQ and Redis: each broker's relay
beside its own client, and its end-to-end latency beside the client's round trip. Timings are never asserted."""

from benchmarks import brokers
from benchmarks._harness import TINY
from tests import redis_server
from tests.broker.test_kills import require


def test_brokers_suite_measures_each_broker_beside_its_own_client() -> None:
    for broker in brokers.BROKERS:
        require(broker)
    redis_server.require()
    lines: list[str] = []
    results = brokers.run(TINY, progress=lines.append)
    found = {(r.scenario, r.implementation) for r in results}
    for broker in brokers.BROKERS:
        for scenario in ("relay", "end_to_end_p50", "end_to_end_p99"):
            assert {(scenario, broker), (scenario, f"{broker} raw")} <= found
    assert all(r.suite == "brokers" and r.median_ns > 0 and r.ratio > 0 for r in results)
    table = brokers.summary(results)
    assert all(f"| {broker} |" in table for broker in brokers.BROKERS)
