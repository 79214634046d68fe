"""The workflows suite's runner works at a tiny size: every operation measured beside the plain command.

Timings are never asserted here.
"""

from benchmarks import workflows
from benchmarks._harness import TINY


def test_workflows_suite_measures_each_operation_beside_a_plain_command() -> None:
    lines: list[str] = []
    results = workflows.run(TINY, progress=lines.append)
    assert [r.scenario for r in results] == ["plain", "scheduling", "firing", "step"]
    assert all(r.suite == "workflows" and r.median_ns > 0 and r.ratio > 0 for r in results)
    assert results[0].ratio == 1.0
    assert lines
    table = workflows.summary(results)
    assert "| a due scheduled command fired" in table
