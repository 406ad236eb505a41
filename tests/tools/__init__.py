"""Tests of what runs from a checkout: benchmarks, examples, scripts, tools, CLI flags, docs."""
