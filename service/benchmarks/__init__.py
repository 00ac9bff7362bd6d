"""Benchmark scripts: they print measured numbers; nothing here is a test."""
