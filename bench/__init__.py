"""`make bench`: Tasklight measured against the bare stack it runs on, in the
same run (issue 5, docs/benchmarks.md). Entry point: ``python -m bench.run``."""
