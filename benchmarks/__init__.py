"""Benchmarks of the local stack (`make bench`). They print numbers; no test asserts on timing."""
