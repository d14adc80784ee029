"""lsskernels benchmarks (not tests): each prints a markdown table and writes
JSON under bench/results/, stamped with the machine, thread count, versions
and git commit. Run `python -m bench --help`."""
