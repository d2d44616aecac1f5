"""`make bench`: every benchmarks/bench_*.py module, each printing ours, the baseline and the ratio."""
