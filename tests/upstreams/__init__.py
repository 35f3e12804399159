"""Upstream MCP servers the tests and benchmarks run as real processes (see `procs`)."""
