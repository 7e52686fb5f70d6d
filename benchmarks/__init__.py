"""Side-by-side timings, run as ``python -m benchmarks.<name>``; printed, never asserted in tests."""
