"""Benchmarks, run by `make bench` (not by pytest): each writes an entry of bench-results.json."""
