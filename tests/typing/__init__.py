"""Typing checks: mypy --strict reads these files; pytest never runs them.

A line that must be rejected carries ``# type: ignore[code]``; since mypy runs
with ``warn_unused_ignores``, the check fails if mypy ever stops rejecting it.
"""
