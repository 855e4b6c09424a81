"""Fault injection for tests: an HTTP proxy that fails a share of requests the ways networks and servers do."""
