"""The tests, laid out as the code they test (see tests/README.md)."""
