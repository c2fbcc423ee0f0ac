"""The parts of the operator benchmark (issue 8); `python -m bench.bench_operator` is its command line."""
