"""crawldex benchmarks (issue 7): `python -m benchmarks` prints one table and writes docs/benchmarks.md."""
