"""Benchmarks: `python -m bench all` (or one by name). Each prints JSON lines; none is part of the tests."""
