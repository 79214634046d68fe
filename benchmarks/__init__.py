"""Benchmarks that prove the project's speed claims side by side with their references.

``python -m benchmarks`` runs every suite; ``python -m benchmarks dispatch`` one.
Every figure is a ratio to a reference measured in the same run, never a bare
time: the machines are shared and noisy.
"""
