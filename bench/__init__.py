"""Benchmarks, run from the repository root as modules, e.g. ``python -m bench.decode``.

Each benchmark prints a table and writes a JSON result (with the machine it ran
on) under ``bench/results/``; ``bench.common`` holds the shared helpers.
"""
