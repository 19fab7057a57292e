"""The CPU-scale reproduction study (issue 16; reference/papers.md §10): its arms (arms.py), how they are
trained and evaluated (runner.py), the fourteen predictions judged from the numbers (verdicts.py) and the
report in docs/results.md (report.py). `ctxjax study` runs it all."""
