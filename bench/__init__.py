"""Benchmarks that print figures (not tests). Run with `make bench` or `python -m bench.<name>`."""
