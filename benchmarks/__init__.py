"""Benchmarks: timings measured side by side in one run and printed, never asserted in tests."""
