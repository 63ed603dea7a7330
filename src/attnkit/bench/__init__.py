"""Benchmark machinery behind `attnkit bench` and benchmarks/."""
