"""Benchmarks: `make bench` runs each against a baseline measured in the same process."""
